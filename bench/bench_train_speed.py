#!/usr/bin/env python
"""Training throughput (images/s) of stage 0: data pipeline, optimizer steps, and the engine end to end.

    PYTHONPATH=src python bench/bench_train_speed.py --preset small          # CPU smoke preset
    PYTHONPATH=src python bench/bench_train_speed.py --device cuda            # seed defaults on a GPU

Three figures, because on a shared CPU they differ a lot:
- data: stage-0 items/s (render + distort + augment + targets) in this process,
- model: images/s of forward + backward + AdamW steps on ready-made batches,
- engine: images/s of ``fit`` (one epoch of ``--steps`` batches, data in the same process unless
  TRAIN.NUM_WORKERS > 0), as the training log reports it.
Also records the torch thread count and the load average (other processes on the machine).
Writes bench/results/bench_train_speed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default=None, help="config preset (e.g. small); default: the seed defaults")
    ap.add_argument("--steps", type=int, default=6, help="optimizer steps to time (after 1 warm-up step)")
    ap.add_argument("--device", default=None, help="cpu / cuda (default: the config's)")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    ap.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "bench_train_speed.json"))
    args = ap.parse_args()

    import torch
    from loguru import logger

    from ecgtrace.config import load_config
    from ecgtrace.io import atomic_write
    from ecgtrace.train.engine import _amp_setup, fit
    from ecgtrace.train.stage0 import TASK

    torch.set_num_threads(args.threads)
    over = list(args.overrides)
    if args.device:
        over.append(f"DEVICE.DEVICE={args.device}")
    cfg = load_config(0, preset=args.preset, overrides=over + ["DATA.ROOT=''"])
    dev = torch.device(cfg.DEVICE.DEVICE if (cfg.DEVICE.DEVICE == "cpu" or torch.cuda.is_available()) else "cpu")
    bs = int(cfg.TRAIN.BATCH_SIZE)
    result = {"preset": args.preset, "device": str(dev), "input_size": list(cfg.MODEL.INPUT_SIZE), "batch_size": bs,
              "backbone": cfg.MODEL.BACKBONE.NAME, "decoder_channels": list(cfg.MODEL.DECODER_CHANNELS),
              "torch_threads": torch.get_num_threads(), "load_avg_before": os.getloadavg()}
    if dev.type == "cuda":
        result["gpu"] = torch.cuda.get_device_name(0)

    # -- data -------------------------------------------------------------------------------
    train_ds, _ = TASK.build_datasets(cfg)
    n_items = bs * (args.steps + 1)
    t0 = time.time()
    items = [train_ds[i % len(train_ds)] for i in range(n_items)]
    result["data_items_per_s"] = n_items / (time.time() - t0)

    # -- model steps on ready-made batches ------------------------------------------------------
    model = TASK.build_model(cfg).to(dev)
    result["parameters"] = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    use_amp, amp_dtype = _amp_setup(cfg, dev)
    batches = [torch.utils.data.default_collate(items[k * bs:(k + 1) * bs]) for k in range(args.steps + 1)]

    def step(batch):
        batch = {k: v.to(dev) for k, v in batch.items()}
        with torch.autocast("cuda", dtype=amp_dtype) if use_amp else torch.autocast("cpu", enabled=False):
            out = model(batch["image"])
            loss, _ = TASK.loss(out, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    model.train()
    step(batches[0])  # warm-up (allocations, cuDNN autotune)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.time()
    for b in batches[1:]:
        step(b)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    result["model_images_per_s"] = args.steps * bs / (time.time() - t0)
    result["amp"] = bool(use_amp)

    # -- the engine, end to end ------------------------------------------------------------------
    with tempfile.TemporaryDirectory() as tmp:
        cfg.OUTPUT.ROOT = tmp
        cfg.TRAIN.EPOCHS = 1
        cfg.TRAIN.MAX_STEPS_PER_EPOCH = args.steps
        cfg.TRAIN.VAL_FRACTION = 0.0
        cfg.DATA.SYNTHETIC_PER_EPOCH = max(cfg.DATA.SYNTHETIC_PER_EPOCH, args.steps * bs)
        logger.remove()
        res = fit(cfg)
        result["engine_images_per_s"] = res.images_per_s
    result["load_avg_after"] = os.getloadavg()
    where = result.get("gpu") or f"{result['torch_threads']} thread(s)"
    print(f"stage 0 training speed on {result['device']} ({where}), "
          f"input {result['input_size']}, batch {bs}, {result['parameters']:,} parameters:")
    print(f"  data pipeline : {result['data_items_per_s']:.2f} items/s")
    print(f"  model steps   : {result['model_images_per_s']:.2f} images/s (amp={result['amp']})")
    print(f"  engine (fit)  : {result['engine_images_per_s']:.2f} images/s")
    print(f"  load average before/after: {result['load_avg_before'][0]:.1f} / {result['load_avg_after'][0]:.1f}")
    out = Path(args.out)
    with atomic_write(out) as tmpf:
        tmpf.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
