#!/usr/bin/env python
"""Train stage 0 with the defaults, no questions asked (seed guide: ``python train_stage0.py``).

Extra arguments are passed on, e.g. ``python train_stage0.py --preset small TRAIN.EPOCHS=1``.
Checkpoints: ./outputs/stage0_checkpoints/stage0_epoch_{E}.pth, stage0_best.pth, stage0_final.pth.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "src"))  # run from a clone, uninstalled


def main(argv: list[str] | None = None) -> int:
    from loguru import logger

    from ecgtrace.cli import main as cli_main
    from ecgtrace.train.engine import setup_logging

    setup_logging()
    logger.info("Testing imports...")
    import ecgtrace.models.stage0  # noqa: F401
    import ecgtrace.train.stage0  # noqa: F401

    logger.info("Basic imports successful")
    return cli_main(["train", "--stage", "0", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
