#!/usr/bin/env python3
"""Stage 1: get and validate data. The same as `tfship build`; run with --help for options."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # works without `pip install` too

from tfship.cli import main

if __name__ == "__main__":
    main(["build", *sys.argv[1:]], prog_name="1_build.py")
