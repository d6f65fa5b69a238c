"""``ecgtrace models``: the weights that ship, their figures, and where each stage's weights come from."""

from __future__ import annotations

import argparse
import json
from typing import Any


def add_weights_options(p: argparse.ArgumentParser | Any, single_stage: int | None = None,
                        backend: bool = True) -> None:
    """``--checkpoints DIR`` (``--checkpoint FILE`` for a one-stage command) and ``--classical``, exclusive;
    with ``backend``, ``--backend torch|onnx`` (what runs the networks).

    ``p`` is a parser or an argument group.
    """
    if backend:
        p.add_argument("--backend", default="torch", choices=("torch", "onnx"),
                       help="what runs the networks: torch (default) or onnx (onnxruntime, extra ecgtrace[onnx]; "
                            "torch weights are exported to ONNX once, into ~/.cache/ecgtrace/onnx)")
    g = p.add_mutually_exclusive_group()
    if single_stage is None:
        g.add_argument("--checkpoints", default=None, metavar="DIR",
                       help="folder with stage{0,1,2}_*.pth (or exported .safetensors); overrides the shipped "
                            "weights per stage (default: the shipped weights, else the classical paths)")
    else:
        g.add_argument("--checkpoint", default=None, metavar="FILE",
                       help=f"stage {single_stage} checkpoint (.pth or exported .safetensors); default: the "
                            "shipped weights, else the classical path")
    g.add_argument("--classical", action="store_true",
                   help="use the classical path" + (" of every stage" if single_stage is None else "")
                        + ", not the shipped weights")


def register(subparsers) -> None:
    """Add the ``models`` subcommand."""
    p = subparsers.add_parser(
        "models",
        help="list the weights that ship with ecgtrace and where each stage's weights come from",
        description="Lists the weights installed with the package (stage, name, sha256 prefix, parameters, size, "
                    "bench figures, how they were trained), then, for the options given, where each stage's "
                    "weights come from: a checkpoint in --checkpoints, else the shipped file, else the classical "
                    "path.",
    )
    add_weights_options(p, backend=False)
    p.add_argument("--json", action="store_true", help="print the manifest and the resolution as JSON")
    p.set_defaults(func=run)


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def _figures(figs: dict[str, Any]) -> str:
    def fmt(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else json.dumps(v) if isinstance(v, (dict, list)) else str(v)

    return ", ".join(f"{k} {fmt(v)}" for k, v in figs.items())


def run(args: argparse.Namespace) -> int:
    """Print what ships and where each stage's weights would come from."""
    from ecgtrace.models import shipped
    from ecgtrace.models.stage2 import network_source

    man = shipped.read_manifest()
    sources = {k: shipped.resolve_weights(k, args.checkpoints, classical=args.classical) for k in shipped.STAGES}
    sources[2] = network_source(sources[2])  # the int8 form of the stage-2 weights, where it is the one to run
    if args.json:
        print(json.dumps({"folder": str(man.folder), "manifest": man.to_dict(),
                          "sources": {f"stage{k}": s.to_dict() for k, s in sources.items()}}, indent=2))
        return 0
    if not man.weights:
        why = f" ({man.problem})" if man.problem else ""
        print(f"No weights ship with this install ({man.path} lists none{why}): every stage uses its classical "
              "path unless --checkpoints DIR gives a model.")
    else:
        total = shipped.folder_size(man.folder)
        print(f"Shipped weights in {man.folder}: {len(man.weights)} file(s), {_size(total)} "
              f"(budget {_size(shipped.SIZE_BUDGET_BYTES)})")
        print(f"  {'stage':<6}{'name':<36}{'sha256':<10}{'parameters':>12}{'size':>10}  status")
        for k, e in sorted(man.weights.items()):
            status = shipped.shipped_problem(e) or "ok"
            print(f"  {k:<6}{e.name:<36}{e.sha256_prefix:<10}{e.parameters:>12,}{_size(e.size_bytes):>10}  {status}")
            cfg = e.pretrained_cfg
            kw = cfg.get("arch_kwargs") or {}
            print(f"        {cfg.get('architecture', '?')}: encoder {kw.get('encoder_name', '?')}, decoder "
                  f"{kw.get('decoder_channels', '?')}, input {cfg.get('input_size')} (h, w)")
            if e.trained:
                print("        trained: " + "; ".join(f"{a} {b}" for a, b in e.trained.items() if b))
            print("        figures: " + (_figures(e.figures) or "none recorded"))
            if e.int8:
                q = e.int8
                print(f"        int8 for onnxruntime: {q['file']} {q['name']} ({q['sha256'][:shipped.SHA_PREFIX]}), "
                      f"{_size(int(q.get('size_bytes') or 0))}  {shipped.int8_problem(e) or 'ok'}")
                if q.get("check"):
                    print("          against float32: " + _figures(q["check"]))
    print("Where each stage's weights come from" + (" (--classical)" if args.classical else
                                                   f" (--checkpoints {args.checkpoints})" if args.checkpoints else "")
          + ":")
    for k, s in sources.items():
        reason = s.note or ("" if s.uses_network else "forced by --classical" if args.classical
                            else "no checkpoint given and no weights ship for this stage")
        why = f"  [{reason}]" if reason else ""
        print(f"  stage {k}: {s.label()}" + (f"  {s.path}" if s.path else "") + why)
    return 0
