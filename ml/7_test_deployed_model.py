#!/usr/bin/env python3
"""Stage 7: verify the model TF Serving serves.

The same as `tfship test-deployed`; run with --help for options.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # works without `pip install` too

from tfship.cli import main

if __name__ == "__main__":
    main(["test-deployed", *sys.argv[1:]], prog_name="7_test_deployed_model.py")
