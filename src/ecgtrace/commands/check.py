"""``ecgtrace check``: training status, one checkpoint's health (``--test``), or all checkpoints (``--list``)."""

from __future__ import annotations

import argparse
import datetime as _dt
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ecgtrace.errors import EcgTraceError


def register(subparsers) -> None:
    """Add the ``check`` subcommand."""
    p = subparsers.add_parser(
        "check",
        help="show training status, test a checkpoint (--test) or list checkpoints (--list)",
        description="Without a flag: checkpoints found per stage, last epoch, best loss and when. --test CKPT: "
                    "load it (a training .pth or an exported/shipped .safetensors), verify keys, architecture and "
                    "a forward pass, and say what is wrong if anything. "
                    "--list: every checkpoint with epoch, loss, size and date.",
    )
    p.add_argument("--test", default=None, metavar="CKPT", help="checkpoint (.pth) or .safetensors file to test")
    p.add_argument("--list", action="store_true", help="list all checkpoints")
    p.add_argument("--output-root", default="./outputs/", dest="output_root",
                   help="where the stage{K}_checkpoints folders are (default ./outputs/)")
    p.add_argument("--device", default="cpu", help="device for the --test forward pass (default cpu)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.test:
        rep = test_checkpoint(args.test, device=args.device)
        for line in rep.lines:
            print(line)
        print(("OK: " if rep.ok else "PROBLEM: ") + rep.diagnosis)
        return 0 if rep.ok else 1
    if args.list:
        rows = list_checkpoints(args.output_root)
        if not rows:
            print(f"no checkpoints under {args.output_root} (train one with `ecgtrace train --stage 0`)")
            return 0
        print(f"{'checkpoint':60s} {'epoch':>5s} {'loss':>9s} {'size':>9s}  date")
        for r in rows:
            print(f"{r['path']:60s} {r['epoch']:>5} {_fmt(r['loss']):>9s} {r['size_mb']:>7.1f}MB  {r['date']}")
        return 0
    for line in status_lines(args.output_root):
        print(line)
    return 0


def _fmt(v: Any) -> str:
    try:
        return f"{float(v):.4f}"
    except (TypeError, ValueError):
        return "-"


def _date(ts: float) -> str:
    return _dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def _peek(path: Path) -> dict[str, Any]:
    """epoch/loss/best_loss of a checkpoint, read lazily (memory-mapped) so big files are cheap."""
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # noqa: BLE001 - reported, not raised
        from ecgtrace.models.checkpoint import diagnose_load_error

        return {"error": diagnose_load_error(path, e)}
    if not isinstance(obj, dict):
        return {"error": f"{path} is not a checkpoint dict"}
    return {k: obj.get(k) for k in ("epoch", "loss", "best_loss", "val_loss", "stage", "saved_at")}


def list_checkpoints(output_root: str) -> list[dict[str, Any]]:
    """Every ``*.pth`` in ``{output_root}/stage{K}_checkpoints``, with epoch, loss, size (MB) and date."""
    from ecgtrace.train.checkpoint import checkpoint_dir

    rows = []
    for k in (0, 1, 2):
        d = Path(checkpoint_dir(output_root, k))
        if not d.is_dir():
            continue
        for p in sorted(d.glob("*.pth"), key=lambda q: (q.stat().st_mtime, q.name)):
            info = _peek(p)
            rows.append({"path": str(p), "stage": k, "epoch": info.get("epoch", "?") if "error" not in info else "BAD",
                         "loss": info.get("loss"), "size_mb": p.stat().st_size / 1e6, "date": _date(p.stat().st_mtime),
                         "error": info.get("error", "")})
    return rows


def status_lines(output_root: str) -> list[str]:
    """Training status of each stage, one block per stage."""
    from ecgtrace.train.checkpoint import best_path, checkpoint_dir, epoch_checkpoints, final_path

    lines = [f"Training status under {output_root}"]
    for k in (0, 1, 2):
        d = checkpoint_dir(output_root, k)
        eps = epoch_checkpoints(d, k)
        best, final = Path(best_path(d, k)), Path(final_path(d, k))
        if not eps and not best.exists() and not final.exists():
            lines.append(f"Stage {k}: no checkpoints (train with `ecgtrace train --stage {k}`)")
            continue
        files = [p for _, p in eps] + [p for p in (best, final) if p.exists()]
        newest = max(files, key=lambda p: p.stat().st_mtime)
        last_epoch = eps[-1][0] if eps else "?"
        info = _peek(best) if best.exists() else (_peek(eps[-1][1]) if eps else {})
        best_txt = (_fmt(info.get("best_loss")) if "error" not in info else "unreadable")
        lines.append(f"Stage {k}: {len(files)} checkpoint(s) in {d}; last epoch {last_epoch}; best loss {best_txt}; "
                     f"final model {'yes' if final.exists() else 'not yet'}; last saved {_date(newest.stat().st_mtime)}")
    return lines


@dataclass
class CheckReport:
    """Result of :func:`test_checkpoint`."""

    ok: bool
    diagnosis: str
    lines: list[str] = field(default_factory=list)



def _weights_problem(model, sd: dict, lines: list[str], nan_fix: str) -> "CheckReport | None":
    """The failed report when ``sd`` does not fit ``model`` exactly or holds NaN/inf; None when it is sound."""
    import torch

    from ecgtrace.models import checkpoint as mck

    rep = mck.compare_state_dict(model, sd)
    if not rep.ok:
        return CheckReport(False, f"architecture mismatch: {rep.summary()}; the weights do not belong to the "
                                  "recorded architecture (file edited or mixed up?)", lines)
    bad = [k for k, v in sd.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        return CheckReport(False, f"{len(bad)} weight tensors hold NaN/inf (e.g. {bad[0]}); {nan_fix}", lines)
    return None

def test_checkpoint(path: str | Path, device: str = "cpu") -> CheckReport:
    """Load ``path``, check its keys, rebuild the recorded architecture, load the weights and run a forward pass."""

    from ecgtrace.models import checkpoint as mck
    from ecgtrace.train import checkpoint as ck

    p = Path(path)
    lines: list[str] = []
    if not p.is_file():
        return CheckReport(False, f"{p} does not exist; list checkpoints with `ecgtrace check --list`", lines)
    lines.append(f"File: {p} ({p.stat().st_size / 1e6:.1f} MB, {_date(p.stat().st_mtime)})")
    if mck.is_inference_file(p):
        return _test_inference_file(p, device, lines)
    if mck.is_onnx_file(p):
        return _test_onnx_file(p, device, lines)
    try:
        state = mck.load_checkpoint(p)
    except EcgTraceError as e:
        return CheckReport(False, str(e), lines)
    missing_guide = [k for k in ck.GUIDE_KEYS if k not in state]
    missing_extra = [k for k in ck.REQUIRED_KEYS if k not in state and k not in ck.GUIDE_KEYS]
    lines.append(f"Keys: {', '.join(sorted(state))}")
    if missing_guide:
        return CheckReport(False, f"{p} lacks required key(s) {', '.join(missing_guide)}; it was not written by "
                                  "`ecgtrace train` or is from an incompatible version", lines)
    if missing_extra:
        lines.append(f"Note: no {', '.join(missing_extra)} (an older/foreign file: it loads, but --resume and "
                     "architecture checks are limited)")
    lines.append(f"Stage {state.get('stage', '?')}, epoch {state['epoch']}, loss {_fmt(state['loss'])}, "
                 f"best loss {_fmt(state.get('best_loss'))}, validation loss {_fmt(state.get('val_loss'))}")
    metrics = state.get("metrics") or {}
    if metrics:
        lines.append("Metrics: " + ", ".join(f"{k} {_fmt(v)}" for k, v in metrics.items()))
    arch = state.get("arch") or {}
    lines.append(f"Architecture: {arch.get('name') or 'from config'} {arch.get('kwargs') or ''}".rstrip())
    try:
        model = ck.build_model_from_checkpoint(state)
    except EcgTraceError as e:
        return CheckReport(False, f"cannot rebuild the model of {p}: {e}", lines)
    sd = mck.strip_module_prefix(state["model_state_dict"])
    problem = _weights_problem(model, sd, lines, "the run diverged before this save: use an earlier epoch's checkpoint")
    if problem:
        return problem
    model.load_state_dict(sd, strict=True)
    n_params = sum(v.numel() for v in model.parameters())
    lines.append(f"Weights: {len(sd)} tensors, {n_params:,} parameters, all match")
    weights = mck.pretrained_cfg_of(state)
    lines.append(f"Preprocessing: input {weights.input_size[0]}x{weights.input_size[1]} (h x w), "
                 f"{weights.channel_order} mean {list(weights.mean)} std {list(weights.std)}, "
                 f"heads {', '.join(weights.heads) or '?'}"
                 + ("" if mck.PRETRAINED_CFG_KEY in state else " (derived: the file predates pretrained_cfg)"))
    problem = _forward_check(model, weights.input_size, device, lines)
    if problem:
        return CheckReport(False, problem, lines)
    return CheckReport(True, f"{p.name} is a valid stage {state.get('stage', '?')} checkpoint "
                             f"(epoch {state['epoch']}, loss {_fmt(state['loss'])})", lines)


def _forward_check(model: Any, input_size: tuple[int, int], device: str, lines: list[str]) -> str | None:
    """Run a small forward pass; append its shapes to ``lines``; the problem, or None when it works."""
    import numpy as np
    import torch

    h, w = input_size
    s = min(1.0, 256.0 / max(h, w))  # a small input is enough to prove the forward pass works
    hh, ww = max(32, int(h * s) // 32 * 32), max(32, int(w * s) // 32 * 32)
    model.to(device).eval()
    t0 = time.time()
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, 3, hh, ww, device=device))
    except Exception as e:  # noqa: BLE001 - the diagnosis is the point
        return f"forward pass failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
    outs = out if isinstance(out, dict) else {"output": out}
    shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in outs.items())
    lines.append(f"Forward pass on 1x3x{hh}x{ww}: {shapes} in {time.time() - t0:.2f} s")
    if not all(bool(np.isfinite(v.float().cpu().numpy()).all()) for v in outs.values()):
        return "forward pass gives NaN/inf; the weights are unusable"
    return None


def _test_onnx_file(p: Path, device: str, lines: list[str]) -> CheckReport:
    """``--test`` of an ``.onnx`` network (``ecgtrace export --onnx``): metadata and an onnxruntime forward pass."""
    import torch

    from ecgtrace.models import onnx_backend, shipped

    try:
        net = onnx_backend.load_onnx_file(p, device)
    except EcgTraceError as e:
        return CheckReport(False, str(e), lines)
    cfg, shape = net.cfg, net.model.shape
    lines.append(f"ONNX network ({net.model.precision}): stage {_stage_text(cfg.stage)}, epoch {net.epoch}, input (N, "
                 f"{', '.join(map(str, shape[1:]))}), outputs {', '.join(net.model.output_names)}")
    entry = next((e for e in shipped.read_manifest().weights.values()
                  if e.int8_path is not None and e.int8_path.resolve() == p.resolve()), None)
    if entry is not None:
        problem = shipped.int8_problem(entry)
        if problem:
            return CheckReport(False, f"{problem}; reinstall ecgtrace", lines)
        lines.append(f"Shipped as the int8 form of stage {entry.stage} ({entry.int8['name']}); sha256 matches the "
                     "manifest")
    lines.append(f"Architecture it was exported from: {cfg.architecture or '?'} {cfg.arch_kwargs}")
    out = net.model(torch.zeros(shape))
    bad = [k for k, v in out.items() if not torch.isfinite(v).all()]
    if bad:
        return CheckReport(False, f"{p}: onnxruntime gives NaN/inf for head {bad[0]}; export it again", lines)
    lines.append("Forward pass (onnxruntime): " + ", ".join(f"{k} {tuple(v.shape)}" for k, v in out.items()))
    return CheckReport(True, f"{p.name} is a valid stage {_stage_text(cfg.stage)} ONNX network", lines)


def _test_inference_file(p: Path, device: str, lines: list[str]) -> CheckReport:
    """``--test`` of an exported / shipped ``.safetensors``: metadata, sha256, architecture, forward pass."""

    from ecgtrace.models import checkpoint as mck
    from ecgtrace.models import shipped

    try:
        state = mck.read_inference_file(p)
    except EcgTraceError as e:
        return CheckReport(False, str(e), lines)
    meta = state["metadata"]
    weights = mck.pretrained_cfg_of(state)
    sha = shipped.file_sha256(p)
    lines.append(f"Inference file (safetensors): name {meta.get('name', '?')}, stage {_stage_text(weights.stage)}, "
                 f"epoch {state['epoch']}, exported from {meta.get('source', '?')}")
    lines.append(f"sha256 {sha}")
    entry = next((e for e in shipped.read_manifest().weights.values() if e.path.resolve() == p.resolve()), None)
    if entry is not None:
        if entry.sha256 != sha:
            return CheckReport(False, f"{p} is the shipped stage-{entry.stage} file but does not match the "
                                      f"manifest's sha256 ({entry.sha256_prefix}); reinstall ecgtrace", lines)
        lines.append(f"Shipped as stage {entry.stage} ({entry.name}); sha256 matches the manifest")
    lines.append(f"Architecture: {weights.architecture or '?'} {weights.arch_kwargs}")
    try:
        model = mck.build_model(weights)
    except (EcgTraceError, TypeError, ValueError, RuntimeError) as e:
        return CheckReport(False, f"cannot rebuild the model of {p}: {e}", lines)
    sd = state["model_state_dict"]
    problem = _weights_problem(model, sd, lines, "export again")
    if problem:
        return problem
    model.load_state_dict(sd, strict=True)
    n_params = sum(v.numel() for v in model.parameters())
    lines.append(f"Weights: {len(sd)} tensors, {n_params:,} parameters, all match")
    lines.append(f"Preprocessing: input {weights.input_size[0]}x{weights.input_size[1]} (h x w), "
                 f"{weights.channel_order} mean {list(weights.mean)} std {list(weights.std)}, "
                 f"heads {', '.join(weights.heads) or '?'}")
    problem = _forward_check(model, weights.input_size, device, lines)
    if problem:
        return CheckReport(False, problem, lines)
    return CheckReport(True, f"{p.name} is a valid stage {_stage_text(weights.stage)} inference file "
                             f"({meta.get('name', '?')}, sha256 {sha[:shipped.SHA_PREFIX]})", lines)


def _stage_text(stage: int | None) -> str:
    return "?" if stage is None else str(stage)


__all__ = ["register", "run", "test_checkpoint", "list_checkpoints", "status_lines", "CheckReport"]
