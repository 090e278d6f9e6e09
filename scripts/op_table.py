"""Write the supported-ops list of docs/method.md from the op table (spikeconverter/ops.py).

Usage: python scripts/op_table.py [--check]   (--check: exit 1 if the docs are out of date)"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))  # the one section writer of the generated documents

from spikeconverter.ops import supported_ops_markdown  # noqa: E402

from _common import with_section  # noqa: E402

DOC = ROOT / "docs" / "method.md"


def main() -> int:
    text = DOC.read_text()
    new = with_section(text, "ops", supported_ops_markdown())
    if "--check" in sys.argv:
        return int(new != text)
    DOC.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
