"""``ecgtrace export``: a training checkpoint -> an inference-only fp16 ``.safetensors`` file (or the shipped one),
with ``--onnx`` an ``.onnx`` network for onnxruntime, with ``--int8`` the stage-2 network quantized for it."""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path
from typing import Any

from ecgtrace.errors import EcgTraceError


def register(subparsers) -> None:
    """Add the ``export`` subcommand."""
    p = subparsers.add_parser(
        "export",
        help="turn a training checkpoint into an inference-only .safetensors file (or ship it with --ship)",
        description="Export a training checkpoint (.pth from `ecgtrace train`) as an inference-only file: fp16 "
                    "weights, no optimizer state, the weights description (architecture, input size, "
                    "normalisation, heads) in its metadata. Any command that takes --checkpoint(s) reads it. "
                    "--ship writes it as the package's stage{K}.safetensors instead and updates the manifest "
                    "(ecgtrace/weights/manifest.json, or $ECGTRACE_WEIGHTS_DIR). --onnx writes the network as an "
                    "ONNX file for onnxruntime (`--backend onnx`, extra ecgtrace[onnx]), checked against torch.",
    )
    p.add_argument("checkpoint", metavar="CKPT", help="training checkpoint (.pth) or an exported .safetensors")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--out", default=None, metavar="FILE", help="output file (.safetensors)")
    g.add_argument("--ship", action="store_true",
                   help="write the shipped stage{K}.safetensors and its manifest entry (replaces the old one)")
    p.add_argument("--onnx", action="store_true",
                   help="with --out FILE.onnx: export the network for onnxruntime (its logits are checked against "
                        "torch's on a seeded input)")
    p.add_argument("--int8", action="store_true",
                   help="stage 2: write the network quantized to int8 for onnxruntime (calibrated on our own "
                        "renders, checked against float32), to --out FILE.onnx, or with --ship next to the shipped "
                        "weights it was made from (CKPT must be those weights); `auto` precision then runs it")
    p.add_argument("--calibration-pages", type=int, default=24, dest="calibration_pages", metavar="N",
                   help="with --int8: renders whose row strips set the activation ranges (default 24)")
    p.add_argument("--name", default=None, help="name of the weights (default: stage, encoder, input size, epoch)")
    p.add_argument("--recipe", default=None, metavar="TEXT",
                   help="with --ship: the data recipe it was trained on (default: from the checkpoint's config)")
    p.add_argument("--train-command", default=None, dest="train_command", metavar="TEXT",
                   help="with --ship: the training command (default: `ecgtrace train --stage K` + the recorded "
                        "MODEL.* settings)")
    p.add_argument("--commit", default=None, help="with --ship: the commit it was trained at (default: git HEAD)")
    p.add_argument("--figures", default=None, metavar="JSON_FILE",
                   help="with --ship: a JSON file of bench figures to record (transfer bench per variant, own "
                        "bench, time per picture ...)")
    p.set_defaults(func=run)


def _git_head() -> str:
    """The commit of the source tree ecgtrace runs from, or "" outside a git clone."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def _recorded(ckpt_path: str) -> tuple[str, str]:
    """(training command, data recipe) reconstructed from a checkpoint's config (best effort)."""
    from ecgtrace.models.checkpoint import is_inference_file, load_checkpoint

    if is_inference_file(ckpt_path):
        return "", ""
    ckpt = load_checkpoint(ckpt_path)
    cfg = ckpt.get("config") or {}
    model, data = cfg.get("MODEL") or {}, cfg.get("DATA") or {}
    bb = model.get("BACKBONE") or {}
    parts = [f"ecgtrace train --stage {ckpt.get('stage', cfg.get('STAGE', '?'))}"]
    if bb.get("NAME"):
        parts.append(f"MODEL.BACKBONE.NAME={bb['NAME']}")
    for key in ("INPUT_SIZE", "DECODER_CHANNELS"):
        if model.get(key):
            parts.append(f"'MODEL.{key}={json.dumps(model[key]).replace(' ', '')}'")
    epochs = (cfg.get("TRAIN") or {}).get("EPOCHS")
    if epochs:
        parts.append(f"TRAIN.EPOCHS={epochs}")
    if model.get("INIT"):
        parts.append(f"MODEL.INIT={model['INIT']}")
    variants = ",".join(str(v) for v in data.get("VARIANTS") or []) or "all"
    root = data.get("ROOT") or ""
    recipe = (f"DATA.ROOT={root}, variants {variants}" + (f", synthetic pages on the fly when ROOT holds none "
                                                          f"({data.get('SYNTHETIC_PER_EPOCH')}/epoch)"
                                                          if data.get("SYNTHETIC") else ""))
    return " ".join(parts), recipe


def _read_figures(path: str | None) -> dict[str, Any]:
    if not path:
        return {}
    p = Path(path)
    try:
        figs = json.loads(p.read_text())
    except OSError as e:
        raise EcgTraceError(f"cannot read --figures {p}: {e.strerror or e}") from e
    except ValueError as e:
        raise EcgTraceError(f"--figures {p} is not valid JSON ({e})") from e
    if not isinstance(figs, dict):
        raise EcgTraceError(f"--figures {p} must hold a JSON object (name -> figure), not a {type(figs).__name__}")
    return figs


def _int8(args: argparse.Namespace) -> int:
    """``--int8``: quantize, check, and write the file (or ship it beside the weights it came from)."""
    import tempfile

    from ecgtrace.models import shipped
    from ecgtrace.train.quantize import quantize_stage2

    if args.onnx:
        raise EcgTraceError("--int8 writes an ONNX file already; give --int8 without --onnx")
    if any(v is not None for v in (args.recipe, args.train_command, args.commit)):
        raise EcgTraceError("--recipe, --train-command and --commit describe float weights; the int8 form records "
                            "its calibration itself")
    with tempfile.TemporaryDirectory(prefix="ecgtrace-int8-") as tmp:
        out = Path(tmp) / "stage2-int8.onnx" if args.ship else Path(args.out)
        res = quantize_stage2(args.checkpoint, out, calibration_pages=args.calibration_pages, name=args.name)
        print(f"int8 network of {args.checkpoint}: {res.name}, {res.size_bytes / 1e6:.1f} MB")
        print(f"  against float32 on the check strips: decoded columns {res.mean_shift_px:.3f} px apart on average, "
              f"{100 * res.share_over_1px:.2f} % over 1 px (max logit difference {res.max_logit_diff:.2f})")
        print(f"  kept float32: {', '.join(res.float_nodes)}"
              + ("; the last decoder block and head run on the coarse grid" if res.folded_tail else ""))
        if not args.ship:
            found = res.path.name.startswith("stage2_") or res.path.name == "stage2.onnx"
            print(f"wrote {res.path}; " + ("--checkpoints on its folder runs it" if found else
                                           "name it stage2_*.onnx for --checkpoints DIR to find it, or pass the file "
                                           "itself as --checkpoints (stage2 commands: --checkpoint)"))
            return 0
        entry = shipped.ship_int8(out, {
            "stage": 2, "name": res.name, "source_sha256": shipped.file_sha256(args.checkpoint),
            "calibration": res.calibration, "float_nodes": res.float_nodes,
            "check": {"mean_shift_px": round(res.mean_shift_px, 4), "share_over_1px": round(res.share_over_1px, 5)},
            "figures": _read_figures(args.figures)})
    print(f"shipped {entry.int8_path} beside {entry.file} ({int(entry.int8['size_bytes']) / 1e6:.1f} MB, sha256 "
          f"{entry.int8['sha256'][:shipped.SHA_PREFIX]})")
    _print_budget(entry.folder, "ship a smaller model or drop its int8 form")
    return 0


def _print_budget(folder: Path, fix: str) -> None:
    """How much of the shipped-weights budget ``folder`` uses, and a warning line when it is over."""
    from ecgtrace.models import shipped

    total, budget = shipped.folder_size(folder), shipped.SIZE_BUDGET_BYTES
    print(f"  manifest {folder / shipped.MANIFEST_NAME} updated; weights folder {total / 1e6:.1f} MB "
          f"of the {budget / 1e6:.0f} MB budget")
    if total > budget:
        print(f"WARNING: the shipped weights ({total / 1e6:.1f} MB) exceed the {budget / 1e6:.0f} MB budget; {fix}")


def run(args: argparse.Namespace) -> int:
    """Export (or ship) and print size, parameter count and sha256."""
    from ecgtrace.models import shipped

    if not args.ship and any(v is not None for v in (args.recipe, args.train_command, args.commit, args.figures)):
        raise EcgTraceError("--recipe, --train-command, --commit and --figures go into the manifest: use them "
                            "with --ship")
    if not Path(args.checkpoint).is_file():
        raise EcgTraceError(f"checkpoint {args.checkpoint} not found; list checkpoints with `ecgtrace check --list`")
    if args.int8:
        return _int8(args)
    if args.onnx:
        if args.ship:
            raise EcgTraceError("the shipped weights are .safetensors; --onnx writes a file: use --onnx --out FILE.onnx "
                                "(or --backend onnx, which exports the shipped weights once by itself)")
        from ecgtrace.models.onnx_backend import export_onnx

        onx = export_onnx(args.checkpoint, args.out, name=args.name)
        print(f"wrote {onx.path}: stage {onx.stage if onx.stage is not None else '?'}, {onx.name}, "
              f"{onx.size_bytes / 1e6:.1f} MB, input (N, {', '.join(map(str, onx.shape[1:]))})")
        print(f"  onnxruntime vs torch on a seeded input: max logit difference {onx.max_logit_diff:.2e}")
        return 0
    if args.ship:
        figures = _read_figures(args.figures)
        command, recipe = _recorded(args.checkpoint)
        trained = {"command": args.train_command or command, "data": args.recipe or recipe,
                   "commit": args.commit if args.commit is not None else _git_head(),
                   "checkpoint": Path(args.checkpoint).name}
        entry = shipped.ship_weights(args.checkpoint, name=args.name, trained=trained, figures=figures)
        print(f"shipped stage {entry.stage}: {entry.path} ({entry.size_bytes / 1e6:.1f} MB, "
              f"{entry.parameters:,} parameters)")
        print(f"  name {entry.name}, sha256 {entry.sha256}")
        _print_budget(entry.folder, "ship a smaller model")
        if not figures:
            print("  no --figures given: `ecgtrace models` shows none for it")
        return 0
    res = shipped.export_weights(args.checkpoint, args.out, name=args.name)
    print(f"wrote {res.path}: stage {res.stage if res.stage is not None else '?'}, {res.name}, "
          f"{res.size_bytes / 1e6:.1f} MB, {res.parameters:,} parameters")
    print(f"  sha256 {res.sha256}")
    if res.fp32_tensors:
        print(f"  {len(res.fp32_tensors)} tensor(s) beyond the fp16 range kept in float32 "
              f"(e.g. {res.fp32_tensors[0]})")
    return 0
