#!/usr/bin/env python
"""Checkpoint status and diagnosis (seed guide: ``python check_training.py [--test CKPT] [--list]``)."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "src"))  # run from a clone, uninstalled

if __name__ == "__main__":
    from ecgtrace.cli import main

    sys.exit(main(["check", *sys.argv[1:]]))
