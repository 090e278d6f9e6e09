"""Hash the shipped weights (src/spikeconverter/checkpoints) into the registry the wheel carries
(src/spikeconverter/weights.json). Run after adding or replacing a checkpoint or network file.

Usage: python scripts/weights_registry.py"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from spikeconverter import weights  # noqa: E402

if __name__ == "__main__":
    for name, entry in weights.write_registry().items():
        print(f"{name}: {entry['bytes']:,} bytes, sha256 {entry['sha256'][:16]}...")
