"""``python -m spikeconverter ...`` (and ``torchrun -m spikeconverter ...``): the command line."""

import sys

from .cli import main

sys.exit(main())
