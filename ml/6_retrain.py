#!/usr/bin/env python3
"""Stage 6: retrain on new data against the model actually serving.

The same as `tfship retrain`; run with --help for options.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # works without `pip install` too

from tfship.cli import main

if __name__ == "__main__":
    main(["retrain", *sys.argv[1:]], prog_name="6_retrain.py")
