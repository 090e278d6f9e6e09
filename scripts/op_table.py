"""Write the supported-ops list of docs/method.md from the op table (spikeconverter/ops.py).

Usage: python scripts/op_table.py [--check]   (--check: exit 1 if the docs are out of date)"""

import re
import sys
from pathlib import Path

from spikeconverter.ops import supported_ops_markdown

DOC = Path(__file__).resolve().parent.parent / "docs" / "method.md"


def main() -> int:
    text = DOC.read_text()
    block = "<!-- ops:start -->\n" + supported_ops_markdown() + "\n<!-- ops:end -->"
    new = re.sub(r"<!-- ops:start -->.*?<!-- ops:end -->", lambda _: block, text, flags=re.S)
    if "--check" in sys.argv:
        return int(new != text)
    DOC.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
