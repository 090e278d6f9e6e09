"""Module-level import circles, private names imported across modules and functions over 70
lines in src/spikeconverter (issue 27's targets), measured from the source.

Usage: python scripts/structure_report.py"""

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "src" / "spikeconverter"
LONG = 70


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, name: str) -> set:
    """Modules of the package imported at module level (function-level imports are deferred on purpose)."""
    pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.level:
            base = pkg.rsplit(".", node.level - 1)[0] if node.level > 1 else pkg
            if node.module:  # from .x import y: module x (y may be a submodule of package x)
                target = f"{base}.{node.module}"
                out.add(target)
                out.update(f"{target}.{a.name}" for a in node.names)
            else:  # from . import x: module x, not the package
                out.update(f"{base}.{a.name}" for a in node.names)
    return out


def main() -> int:
    files = {module_name(p): p for p in ROOT.rglob("*.py")}
    graph = {m: {t for t in imports(p, m) if t in files and t != m} for m, p in files.items()}
    cycles, seen = [], set()

    def visit(m, stack):
        for t in graph[m]:
            if t in stack:
                cyc = tuple(stack[stack.index(t):] + [t])
                if frozenset(cyc) not in seen:
                    seen.add(frozenset(cyc))
                    cycles.append(cyc)
            elif len(stack) < 12:
                visit(t, stack + [t])

    for m in sorted(graph):
        visit(m, [m])
    # the package's own __init__ importing its modules is no circle of theirs
    real = [c for c in cycles if "spikeconverter" not in c]
    print("import circles (module level):", "none" if not real else "")
    for c in real:
        print("  " + " -> ".join(c))
    private = []  # `from .x import _y` anywhere (function level too): another module's private name
    for m, p in sorted(files.items()):
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                private += [f"{m}: from {'.' * node.level}{node.module or ''} import {a.name}"
                            for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
    print("private names imported across modules:", "none" if not private else "")
    for line in private:
        print("  " + line)
    print(f"functions over {LONG} lines:")
    for m, p in sorted(files.items()):
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > LONG:
                print(f"  {m}.{node.name}: {node.end_lineno - node.lineno + 1} lines")
    return 0


if __name__ == "__main__":
    sys.exit(main())
