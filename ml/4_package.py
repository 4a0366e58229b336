#!/usr/bin/env python3
"""Stage 4: export the SavedModel with lineage and store it.

The same as `tfship package`; run with --help for options.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # works without `pip install` too

from tfship.cli import main

if __name__ == "__main__":
    main(["package", *sys.argv[1:]], prog_name="4_package.py")
