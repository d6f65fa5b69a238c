"""``ecgtrace train``: train stage 0, 1, 2 or all of them with the shared engine."""

from __future__ import annotations

import argparse
import sys

import yaml
from loguru import logger

from ecgtrace.errors import EcgTraceError


def register(subparsers) -> None:
    """Add the ``train`` subcommand."""
    p = subparsers.add_parser(
        "train",
        help="train a stage's model (checkpoints under ./outputs/stage{K}_checkpoints/)",
        description="Train stage 0 (orientation + lead labels), 1 (grid) or 2 (traces). Settings: defaults < "
                    "--preset < --config YAML < KEY=VALUE overrides (e.g. TRAIN.EPOCHS=3 "
                    "'MODEL.INPUT_SIZE=[576,720]'). Multi-GPU: torchrun --nproc_per_node N -m ecgtrace train ...",
    )
    p.add_argument("--stage", default="0", choices=("0", "1", "2", "all"), help="stage to train (default 0)")
    p.add_argument("--config", default=None, help="YAML config file (write one with --dump-config)")
    p.add_argument("--preset", default=None, help="named preset: 'small' (a CPU smoke run) or 'cpu' (the CPU recipe of each stage: stage 1 ~45 min, stage 2 ~1 h 40 min)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the newest stage{K}_epoch_{E}.pth in the checkpoint folder")
    p.add_argument("--dump-config", action="store_true", dest="dump_config",
                   help="print the resulting config as YAML and exit")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Train the chosen stage(s); ``all`` skips stages whose training is not available yet."""
    from ecgtrace.config import load_config
    from ecgtrace.train.tasks import StageNotAvailable, get_task

    stages = [0, 1, 2] if args.stage == "all" else [int(args.stage)]
    configs = [load_config(k, args.config, list(args.overrides or []), args.preset) for k in stages]
    if args.dump_config:
        for cfg in configs:
            if len(configs) > 1:
                print(f"# stage {cfg.STAGE}")
            sys.stdout.write(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        return 0
    from ecgtrace.train.engine import fit, setup_logging

    setup_logging()
    trained = 0
    for cfg in configs:
        try:
            task = get_task(cfg.STAGE)
        except StageNotAvailable as e:
            if len(configs) == 1:
                raise
            logger.warning(f"{e}; skipping stage {cfg.STAGE}")
            continue
        if len(configs) > 1:
            logger.info(f"=== Stage {cfg.STAGE} ===")
        res = fit(cfg, task=task, resume=bool(args.resume))
        trained += 1
        logger.info(f"Stage {cfg.STAGE}: {res.epochs_completed} epochs, best loss {res.best_loss:.4f}; "
                    f"checkpoints in {res.checkpoint_dir}")
    if not trained:
        raise EcgTraceError("no stage could be trained (none is available yet)")
    return 0
