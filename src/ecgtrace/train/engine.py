"""The one training loop every stage uses.

``fit(cfg)`` builds the stage's task (model, data, loss, metrics), trains for
``TRAIN.EPOCHS`` epochs and writes checkpoints the way the seed guide promises::

    [HH:MM:SS] Epoch 1/5
    [HH:MM:SS]   Batch 0/225, Loss: 4.7123
    [HH:MM:SS] Epoch 1 completed, Average Loss: 4.5678
    [HH:MM:SS] Checkpoint saved: ./outputs/stage0_checkpoints/stage0_epoch_1.pth
    [HH:MM:SS] New best model saved with loss: 4.5678

Exact resume: every source of randomness is either restored from the checkpoint
(python/numpy/torch RNG, optimizer, scheduler, AMP scaler) or a pure function of
(seed, epoch, index) (the sampler's shuffle via ``DistributedSampler.set_epoch``,
and datasets that implement ``set_epoch``), so stopping after epoch k and
resuming gives the same weights as an uninterrupted run.

Multi-GPU: launch with ``torchrun --nproc_per_node N -m ecgtrace train ...``;
``TRAIN.BATCH_SIZE`` is per process. gloo on CPU, nccl on CUDA; only rank 0
logs and writes files.
"""

from __future__ import annotations

import math
import os
import random
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
from loguru import logger
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from torch.utils.data.distributed import DistributedSampler

from ecgtrace.errors import EcgTraceError
from ecgtrace.models.checkpoint import PRETRAINED_CFG_KEY, describe_weights, strip_module_prefix
from ecgtrace.models.device import resolve_device
from ecgtrace.train import checkpoint as ck
from ecgtrace.train.tasks import Task, get_task


class TrainingDiverged(EcgTraceError):
    """The loss became NaN/inf; the run stopped and the last good checkpoint is kept."""


@dataclass
class FitResult:
    """What a finished (or stopped) run produced."""

    stage: int
    epochs_completed: int
    last_loss: float
    best_loss: float
    checkpoint_dir: str
    history: list[dict[str, Any]] = field(default_factory=list)
    images_per_s: float = float("nan")  # training throughput of the last epoch (all processes)
    resumed_from: str = ""


def setup_logging(level: str | None = None) -> None:
    """Log as the guide shows (``[HH:MM:SS] message``) to stderr, through tqdm so bars stay intact."""
    from tqdm import tqdm

    logger.remove()
    logger.add(lambda m: tqdm.write(m, end="", file=sys.stderr), colorize=False,
               format="[{time:HH:mm:ss}] {message}", level=level or os.environ.get("ECGTRACE_LOG", "INFO"))


# --- distributed helpers ---------------------------------------------------------------
@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    initialized_here: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def _init_distributed(device_kind: str) -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist()
    here = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_kind == "cuda" else "gloo")
        here = True
    return _Dist(rank=dist.get_rank(), world=dist.get_world_size(),
                 local_rank=int(os.environ.get("LOCAL_RANK", "0")), initialized_here=here)


def _all_sum(values: list[float], dd: _Dist, device: torch.device) -> list[float]:
    if not dd.active:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


# --- small pieces ------------------------------------------------------------------------
def _resolve_device(cfg: Any, dd: _Dist) -> torch.device:
    device = resolve_device(cfg.DEVICE.DEVICE, "training")
    if device.type == "cuda" and dd.active:
        torch.cuda.set_device(dd.local_rank)
        return torch.device("cuda", dd.local_rank)
    return device


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], torch.Tensor):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def _batch_size(batch: Any) -> int:
    if isinstance(batch, dict):
        img = batch.get("image")
        if isinstance(img, torch.Tensor):
            return int(img.shape[0])
        for v in batch.values():
            if isinstance(v, torch.Tensor):
                return int(v.shape[0])
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0])
    return 1


def _set_epoch(ds: Dataset | None, epoch: int) -> None:
    """Tell a dataset (or the dataset under a Subset) which epoch is starting."""
    while ds is not None:
        fn = getattr(ds, "set_epoch", None)
        if callable(fn):
            fn(epoch)
            return
        ds = getattr(ds, "dataset", None) if isinstance(ds, Subset) else None


def _debug_subset(ds: Dataset | None, n: int) -> Dataset | None:
    if ds is None:
        return None
    return Subset(ds, list(range(min(n, len(ds)))))


def make_scheduler(optimizer: torch.optim.Optimizer, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up (5 % of the steps, at most 200) then cosine decay to 5 % of the base rate, per step."""
    total = max(1, total_steps)
    warm = max(1, min(200, total // 20))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        t = min(1.0, (step - warm) / max(1, total - warm))
        return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * t))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _amp_setup(cfg: Any, device: torch.device) -> tuple[bool, torch.dtype | None]:
    if device.type != "cuda" or not bool(cfg.TRAIN.AMP):
        return False, None  # mixed precision only ever on CUDA
    return True, (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)


def _save_debug_inputs(batch: dict, out_dir: Path, n: int = 4) -> None:
    """Write the first images of a batch as PNGs (de-normalized if the batch says how)."""
    import cv2

    img = batch.get("image") if isinstance(batch, dict) else None
    if not isinstance(img, torch.Tensor) or img.ndim != 4:
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    x = img[:n].detach().float().cpu().numpy()
    for i, a in enumerate(x):
        a = np.moveaxis(a[:3], 0, -1)
        lo, hi = float(a.min()), float(a.max())
        a = (a - lo) / (hi - lo + 1e-8) * 255.0
        cv2.imwrite(str(out_dir / f"input_{i}.png"), a.astype(np.uint8))


# --- the loop -------------------------------------------------------------------------------
def fit(cfg: Any, task: Task | str | None = None, resume: bool = False,
        stop_after_epoch: int | None = None, on_epoch_end: Callable[[dict[str, Any]], None] | None = None
        ) -> FitResult:
    """Train ``cfg.STAGE`` (or ``task``) as configured; see the module docstring.

    Args:
        cfg: a :class:`ecgtrace.config.Config`.
        task: a task object, an import string ``"module:ATTR"``, or None for ``get_task(cfg.STAGE)``.
        resume: continue from the newest readable ``stage{K}_epoch_{E}.pth`` in the checkpoint folder.
        stop_after_epoch: stop (as if interrupted) after this epoch; used by tests and time-boxed runs.
        on_epoch_end: called with each epoch's record (rank 0 only).
    """
    if task is None or isinstance(task, (str, int)):
        task = get_task(cfg.STAGE if task is None else task)
    stage = int(getattr(task, "stage", cfg.STAGE))
    dd = _init_distributed("cuda" if str(cfg.DEVICE.DEVICE).startswith("cuda") and torch.cuda.is_available()
                           else "cpu")
    log: Callable[[str], None] = logger.info if dd.main else (lambda _m: None)
    device = _resolve_device(cfg, dd)
    seed = int(cfg.TRAIN.SEED)
    seed_everything(seed + dd.rank)
    debug = bool(cfg.DEBUG.ENABLED)
    ckpt_dir = ck.checkpoint_dir(cfg.OUTPUT.ROOT, stage)
    sink_id = None
    try:
        # -- data -------------------------------------------------------------------------
        log("Created dataset...")
        train_ds, val_ds = task.build_datasets(cfg)
        if debug:
            train_ds = _debug_subset(train_ds, int(cfg.DEBUG.N_SAMPLES))
            val_ds = _debug_subset(val_ds, max(2, int(cfg.DEBUG.N_SAMPLES) // 4))
            torch.autograd.set_detect_anomaly(True)
            log(f"Debug mode: {len(train_ds)} samples, anomaly detection on, debug images under "
                f"{os.path.join(cfg.OUTPUT.ROOT, 'debug', f'stage{stage}')}")
        if train_ds is None or len(train_ds) == 0:
            raise EcgTraceError("the training set is empty; check DATA.ROOT or turn on DATA.SYNTHETIC")
        log(f"Loaded {len(train_ds)} training samples" + (f", {len(val_ds)} validation samples" if val_ds else ""))
        bs = int(cfg.TRAIN.BATCH_SIZE)
        collate = getattr(task, "collate", None)
        train_sampler = DistributedSampler(train_ds, num_replicas=dd.world, rank=dd.rank, shuffle=True, seed=seed)
        loader_kw: dict[str, Any] = {"num_workers": int(cfg.TRAIN.NUM_WORKERS), "pin_memory": device.type == "cuda"}
        if collate is not None:
            loader_kw["collate_fn"] = collate
        train_loader = DataLoader(train_ds, batch_size=bs, sampler=train_sampler, drop_last=False, **loader_kw)
        val_loader = None
        if val_ds is not None and len(val_ds) > 0:
            val_sampler = DistributedSampler(val_ds, num_replicas=dd.world, rank=dd.rank, shuffle=False)
            val_loader = DataLoader(val_ds, batch_size=bs, sampler=val_sampler, **loader_kw)

        # -- model, optimizer --------------------------------------------------------------
        log("Creating model...")
        model = task.build_model(cfg).to(device)
        n_params = sum(p.numel() for p in model.parameters())
        log(f"Model created with {n_params:,} parameters")
        arch = dict(getattr(model, "arch", None) or {"name": None, "kwargs": {}})
        weights_cfg = describe_weights(model, stage, cfg.MODEL.INPUT_SIZE).to_dict()
        if dd.active:
            model = nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None)
        optimizer = torch.optim.AdamW(model.parameters(), lr=float(cfg.TRAIN.LEARNING_RATE),
                                      weight_decay=float(cfg.TRAIN.WEIGHT_DECAY))
        steps_per_epoch = len(train_loader)
        if int(cfg.TRAIN.MAX_STEPS_PER_EPOCH) > 0:
            steps_per_epoch = min(steps_per_epoch, int(cfg.TRAIN.MAX_STEPS_PER_EPOCH))
        epochs = int(cfg.TRAIN.EPOCHS)
        scheduler = make_scheduler(optimizer, epochs * steps_per_epoch)
        use_amp, amp_dtype = _amp_setup(cfg, device)
        scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
        autocast = (lambda: torch.autocast("cuda", dtype=amp_dtype)) if use_amp else nullcontext

        if dd.main:
            existed = os.path.isdir(ckpt_dir)
            os.makedirs(ckpt_dir, exist_ok=True)
            log(("Using checkpoint directory: " if existed else "Created checkpoint directory: ")
                + ckpt_dir.rstrip("/") + "/")
            sink_id = logger.add(os.path.join(ckpt_dir, "train.log"), format="[{time:HH:mm:ss}] {message}",
                                 level="INFO")

        # -- resume --------------------------------------------------------------------------
        start_epoch, best_loss, history, resumed_from = 1, float("inf"), [], ""
        if resume:
            state, path = _latest_good_checkpoint(ckpt_dir, stage, log)
            if state is None:
                log(f"No checkpoint to resume from in {ckpt_dir}; starting from scratch")
            else:
                if state.get("arch", {}).get("name") and arch.get("name") and state["arch"] != arch:
                    raise EcgTraceError(f"cannot resume from {path}: it was trained with a different architecture "
                                        f"({state['arch'].get('kwargs')}); use the same MODEL.* settings "
                                        "or start without --resume in a new OUTPUT.ROOT")
                _unwrap(model).load_state_dict(strip_module_prefix(state["model_state_dict"]))
                optimizer.load_state_dict(state["optimizer_state_dict"])
                if state.get("scheduler_state_dict"):
                    scheduler.load_state_dict(state["scheduler_state_dict"])
                if state.get("scaler_state_dict") and scaler.is_enabled():
                    scaler.load_state_dict(state["scaler_state_dict"])
                if dd.main:
                    ck.set_rng_state(state.get("rng_state") or {})
                else:  # only rank 0's state is stored; other ranks get a fresh, epoch-specific seed
                    seed_everything(seed + dd.rank + 1000 * int(state["epoch"]))
                start_epoch = int(state["epoch"]) + 1
                best_loss = float(state.get("best_loss", float("inf")))
                history = list(state.get("history") or [])
                resumed_from = str(path)
                log(f"Resumed from {path} (epoch {state['epoch']}, best loss {best_loss:.4f})")

        init = str(getattr(cfg.MODEL, "INIT", "") or "")
        if init and not resumed_from:  # a resumed run continues its own weights
            used = ck.init_weights(_unwrap(model), init, stage)
            log(f"Initialised weights from {init}" + (f" ({used})" if str(used) != init else ""))

        # -- epochs ------------------------------------------------------------------------------
        log_every = 1 if debug else max(1, int(cfg.TRAIN.LOG_EVERY))
        tty = dd.main and sys.stderr.isatty()
        last_loss, ips = float("nan"), float("nan")
        last_epoch = start_epoch - 1
        for epoch in range(start_epoch, epochs + 1):
            log(f"Epoch {epoch}/{epochs}")
            model.train()
            train_sampler.set_epoch(epoch)
            _set_epoch(train_ds, epoch)
            t0 = time.time()
            loss_sum, n_seen = 0.0, 0
            parts_sum: dict[str, float] = {}
            bar = _progress(steps_per_epoch, epoch, enabled=tty)
            for i, batch in enumerate(train_loader):
                if i >= steps_per_epoch:
                    break
                batch = _to_device(batch, device)
                if debug and isinstance(batch, dict) and isinstance(batch.get("image"), torch.Tensor):
                    if not torch.isfinite(batch["image"]).all():
                        raise EcgTraceError(f"debug: non-finite values in the input images of batch {i}; "
                                            "check the data set / augmentation")
                with autocast():
                    outputs = model(batch["image"] if isinstance(batch, dict) else batch)
                    loss, parts = task.loss(outputs, batch)
                loss = loss.float()
                bad = torch.tensor([0.0 if torch.isfinite(loss).item() else 1.0], device=device)
                if dd.active:
                    dist.all_reduce(bad)
                if bad.item() > 0:
                    raise TrainingDiverged(_diverged_message(loss.item(), epoch, i, ckpt_dir, stage))
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if float(cfg.TRAIN.GRAD_CLIP) > 0:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), float(cfg.TRAIN.GRAD_CLIP))
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                b = _batch_size(batch)
                lv = float(loss.item())
                loss_sum += lv * b
                n_seen += b
                for k, v in parts.items():
                    parts_sum[k] = parts_sum.get(k, 0.0) + float(v) * b
                if i % log_every == 0:
                    log(f"  Batch {i}/{steps_per_epoch}, Loss: {lv:.4f}")
                if debug and i == 0 and dd.main:
                    _debug_dump(task, outputs, batch, Path(cfg.OUTPUT.ROOT) / "debug" / f"stage{stage}" / f"epoch_{epoch}")
                bar.update(1)
                bar.set_postfix(loss=f"{lv:.4f}")
            bar.close()
            tot = _all_sum([loss_sum, float(n_seen)] + [parts_sum[k] for k in sorted(parts_sum)], dd, device)
            avg = tot[0] / max(1.0, tot[1])
            parts_avg = {k: tot[2 + j] / max(1.0, tot[1]) for j, k in enumerate(sorted(parts_sum))}
            dt = time.time() - t0
            ips = tot[1] / max(dt, 1e-9)
            log(f"Epoch {epoch} completed, Average Loss: {avg:.4f}")
            log(f"  {tot[1]:.0f} images in {dt:.1f} s ({ips:.2f} images/s)"
                + ("; " + ", ".join(f"{k}: {v:.4f}" for k, v in parts_avg.items()) if parts_avg else ""))

            val_loss, metrics = float("nan"), {}
            if val_loader is not None:
                val_loss, metrics = _validate(model, task, val_loader, device, autocast, dd)
                log(f"  Validation Loss: {val_loss:.4f}"
                    + ("; " + ", ".join(f"{k}: {v:.4f}" for k, v in metrics.items()) if metrics else ""))
            crit = val_loss if val_loader is not None else avg
            record = {"epoch": epoch, "loss": avg, "val_loss": val_loss, "metrics": metrics, "parts": parts_avg,
                      "time_s": dt, "images_per_s": ips, "lr": float(optimizer.param_groups[0]["lr"])}
            history.append(record)
            is_best = math.isfinite(crit) and crit < best_loss
            if is_best:
                best_loss = crit
            if dd.main:
                state = {
                    "epoch": epoch,
                    "model_state_dict": _unwrap(model).state_dict(),
                    "optimizer_state_dict": optimizer.state_dict(),
                    "loss": avg,
                    "config": cfg.to_dict(),
                    "scheduler_state_dict": scheduler.state_dict(),
                    "scaler_state_dict": scaler.state_dict(),
                    "rng_state": ck.get_rng_state(),
                    "stage": stage,
                    "arch": arch,
                    PRETRAINED_CFG_KEY: weights_cfg,
                    "best_loss": best_loss,
                    "val_loss": val_loss,
                    "metrics": metrics,
                    "history": history,
                    "world_size": dd.world,
                }
                p = ck.epoch_path(ckpt_dir, stage, epoch)
                ck.save_checkpoint(state, p)
                log(f"Checkpoint saved: {p}")
                if is_best:
                    ck.save_checkpoint(state, ck.best_path(ckpt_dir, stage))
                    log(f"New best model saved with loss: {best_loss:.4f}")
                if epoch == epochs:
                    fp = ck.final_path(ckpt_dir, stage)
                    ck.save_checkpoint(state, fp)
                    log(f"Training completed. Final model saved: {fp}")
                if on_epoch_end is not None:
                    on_epoch_end(record)
            if dd.active:
                dist.barrier()
            last_loss, last_epoch = avg, epoch
            if stop_after_epoch is not None and epoch >= stop_after_epoch:
                log(f"Stopping after epoch {epoch} as asked; continue with --resume")
                break
        if start_epoch > epochs:
            log(f"Already trained for {start_epoch - 1} of {epochs} epochs; nothing to do "
                "(raise TRAIN.EPOCHS to train longer)")
        return FitResult(stage=stage, epochs_completed=last_epoch, last_loss=last_loss, best_loss=best_loss,
                         checkpoint_dir=ckpt_dir, history=history, images_per_s=ips, resumed_from=resumed_from)
    finally:
        if debug:
            torch.autograd.set_detect_anomaly(False)
        if sink_id is not None:
            logger.remove(sink_id)
        if dd.initialized_here and dist.is_initialized():
            dist.destroy_process_group()


class _NoBar:
    def update(self, n: int = 1) -> None: ...

    def set_postfix(self, **kw: Any) -> None: ...

    def close(self) -> None: ...


def _progress(total: int, epoch: int, enabled: bool) -> Any:
    """A tqdm bar on a terminal; nothing when stderr is a file/pipe (logs stay clean)."""
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, desc=f"epoch {epoch}", leave=False, dynamic_ncols=True, file=sys.stderr)


def _validate(model: nn.Module, task: Task, loader: DataLoader, device: torch.device, autocast: Callable,
              dd: _Dist) -> tuple[float, dict[str, float]]:
    """Mean validation loss and batch-size-weighted mean metrics (summed over processes)."""
    model.eval()
    loss_sum, n = 0.0, 0
    msum: dict[str, float] = {}
    mcnt: dict[str, float] = {}
    with torch.no_grad():
        for batch in loader:
            batch = _to_device(batch, device)
            with autocast():
                outputs = model(batch["image"] if isinstance(batch, dict) else batch)
                loss, _ = task.loss(outputs, batch)
            outputs = {k: v.float() for k, v in outputs.items()}
            b = _batch_size(batch)
            loss_sum += float(loss.float().item()) * b
            n += b
            for k, v in task.metrics(outputs, batch).items():
                v = float(v)
                if math.isfinite(v):  # NaN = "not defined for this batch" (e.g. no marker found); skip it
                    msum[k] = msum.get(k, 0.0) + v * b
                    mcnt[k] = mcnt.get(k, 0.0) + b
                else:
                    msum.setdefault(k, 0.0)
                    mcnt.setdefault(k, 0.0)
    keys = sorted(msum)
    tot = _all_sum([loss_sum, float(n)] + [msum[k] for k in keys] + [mcnt[k] for k in keys], dd, device)
    denom = max(1.0, tot[1])
    nk = len(keys)
    model.train()
    return tot[0] / denom, {k: (tot[2 + j] / tot[2 + nk + j] if tot[2 + nk + j] > 0 else float("nan"))
                            for j, k in enumerate(keys)}


def _latest_good_checkpoint(ckpt_dir: str, stage: int, log: Callable[[str], None]
                            ) -> tuple[dict[str, Any] | None, Path | None]:
    for epoch, path in reversed(ck.epoch_checkpoints(ckpt_dir, stage)):
        try:
            return ck.load_checkpoint(path), path
        except EcgTraceError as e:
            log(f"Skipping unreadable checkpoint: {e}")
    return None, None


def _diverged_message(value: float, epoch: int, batch: int, ckpt_dir: str, stage: int) -> str:
    good = ck.epoch_checkpoints(ckpt_dir, stage)
    keep = (f"the last good checkpoint is {good[-1][1]} (epoch {good[-1][0]})" if good
            else "no checkpoint was written yet")
    return (f"training stopped: loss became {value} at epoch {epoch}, batch {batch}; {keep}; "
            "lower TRAIN.LEARNING_RATE or check the data with DEBUG.ENABLED=True")


def _debug_dump(task: Task, outputs: dict, batch: Any, out_dir: Path) -> None:
    try:
        _save_debug_inputs(batch, out_dir)
        fn = getattr(task, "debug_images", None)
        if callable(fn):
            fn({k: v.detach().float().cpu() for k, v in outputs.items()}, batch, out_dir)
        logger.info(f"  Debug images saved under {out_dir}")
    except Exception as e:  # noqa: BLE001 - debug output must never stop training
        logger.warning(f"  Could not save debug images: {type(e).__name__}: {e}")
