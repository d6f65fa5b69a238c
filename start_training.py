#!/usr/bin/env python
"""Train any stage (seed guide: ``python start_training.py --stage 0|1|2|all``).

Same options as ``ecgtrace train``: --config F, --preset small, --resume, KEY=VALUE overrides.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "src"))  # run from a clone, uninstalled

if __name__ == "__main__":
    from ecgtrace.cli import main

    sys.exit(main(["train", *sys.argv[1:]]))
