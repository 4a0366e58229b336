#!/usr/bin/env python3
"""Stage 2: train the model. The same as `tfship train`; run with --help for options."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # works without `pip install` too

from tfship.cli import main

if __name__ == "__main__":
    main(["train", *sys.argv[1:]], prog_name="2_train.py")
