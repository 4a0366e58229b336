#!/usr/bin/env python3
"""Stage 3: evaluate and apply the quality gate.

The same as `tfship test`; run with --help for options.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # works without `pip install` too

from tfship.cli import main

if __name__ == "__main__":
    main(["test", *sys.argv[1:]], prog_name="3_test.py")
