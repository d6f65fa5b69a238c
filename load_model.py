#!/usr/bin/env python
"""Run a trained stage-0 model on a picture (seed guide).

    python load_model.py --checkpoint ./outputs/stage0_checkpoints/stage0_best.pth \
        --image path/to/ecg.jpg --output ./outputs/inference/

writes marker_prediction.jpg and normalized.png and prints the orientation class and confidence.
From Python::

    from load_model import ECGModelLoader
    loader = ECGModelLoader("./outputs/stage0_checkpoints/stage0_best.pth", "cuda")
    model, config = loader.load_model()
    results = loader.inference("path/to/ecg.jpg")
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "src"))  # run from a clone, uninstalled

from ecgtrace.stages.stage0 import ECGModelLoader  # noqa: E402

__all__ = ["ECGModelLoader"]

if __name__ == "__main__":
    from ecgtrace.cli import main

    sys.exit(main(["stage0", *sys.argv[1:]]))
