"""The stage networks run by onnxruntime instead of torch (``--backend onnx``, extra ``ecgtrace[onnx]``).

Two ways in:

- an ``.onnx`` file written by ``ecgtrace export CKPT --onnx --out FILE.onnx`` (given like any
  checkpoint, ``--checkpoints DIR`` finds ``stage{K}*.onnx``);
- ``backend="onnx"`` with torch weights (a training checkpoint, an exported or the shipped
  ``.safetensors``): they are exported once into a cache (``$ECGTRACE_CACHE_DIR/onnx``, default
  ``~/.cache/ecgtrace/onnx``), keyed by the weights' sha256, the export format and the torch and
  ecgtrace versions, and read from there afterwards.

An ONNX file carries the same ``pretrained_cfg`` as the other weights files (in its metadata),
so preprocessing is taken from there. The export fixes the picture size each stage reads (for
stage 2, its row strips); only the batch dimension is free. :class:`OnnxNetwork` is called like
the torch network (image batch -> ``{head: logits}``), so the stages do not know which runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from loguru import logger

from ecgtrace.errors import EcgTraceError
from ecgtrace.io import atomic_write
from ecgtrace.models.checkpoint import (
    INFERENCE_SUFFIX,
    ONNX_SUFFIX,
    PRETRAINED_CFG_KEY,
    LoadedModel,
    PretrainedCfg,
    check_fits,
    is_onnx_file,
    load_model,
    read_inference_file,
)

#: The ways a stage network can run.
BACKENDS = ("torch", "onnx")
#: Version of what :func:`export_onnx` writes; bump it when a network's forward changes, so cached
#: exports of unchanged weights are made again.
ONNX_FORMAT = 1
OPSET = 17
INPUT_NAME = "image"
#: Outputs of an export must agree with torch's within ``LOGIT_TOLERANCE + LOGIT_RTOL * |logit|``: 1e-3 on the
#: logits, relative to float32's resolution where a fixed prior makes them large (stage 1's line indices, ~1e4).
LOGIT_TOLERANCE = 1e-3
LOGIT_RTOL = 1e-5
_INSTALL = "pip install 'ecgtrace[onnx]'"


def check_backend(backend: str) -> str:
    """``backend`` if it is known and can run here; else a one-line error that says what to install."""
    name = str(backend or "torch").lower()
    if name not in BACKENDS:
        raise EcgTraceError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
    if name == "onnx":
        _ort()
    return name


def _ort() -> Any:
    try:
        import onnxruntime
    except ImportError as e:
        raise EcgTraceError(f"--backend onnx needs onnxruntime, which is not installed: {_INSTALL}") from e
    return onnxruntime


def onnxruntime_available() -> bool:
    """Whether onnxruntime imports here (:func:`check_backend` says what to install when it does not)."""
    try:
        _ort()
    except EcgTraceError:
        return False
    return True


def input_shape(cfg: PretrainedCfg) -> tuple[int, int, int, int]:
    """(batch, channels, height, width) the network of ``cfg`` is fed by its stage.

    Stage 2 reads the four row strips of its page (:func:`ecgtrace.models.stage2.strip_height`);
    the other stages one picture at ``input_size``.
    """
    h, w = (int(v) for v in cfg.input_size)
    if cfg.stage == 2:
        from ecgtrace.models.stage2 import strip_height
        from ecgtrace.paper import CANONICAL, N_ROWS

        return N_ROWS, 3, strip_height(CANONICAL.scaled_to(w)), w
    return 1, 3, h, w


def logits_agree(got: np.ndarray | torch.Tensor, want: np.ndarray | torch.Tensor) -> tuple[bool, float]:
    """(within tolerance everywhere, max absolute difference) of two logit arrays of one shape."""
    g, w = np.asarray(got, np.float64), np.asarray(want, np.float64)
    diff = np.abs(g - w)
    ok = bool(g.shape == w.shape and np.all(np.isfinite(g)) and np.all(diff <= LOGIT_TOLERANCE + LOGIT_RTOL * np.abs(w)))
    return ok, float(diff.max()) if diff.size else 0.0


# --------------------------------------------------------------------------- running
class OnnxNetwork:
    """An onnxruntime session called like the torch network: ``net(x)`` -> ``{head: logits}`` (torch tensors)."""

    def __init__(self, session: Any, path: Path, shape: tuple[int, ...], precision: str = "fp32") -> None:
        self.session = session
        self.path = path
        self.shape = tuple(int(v) for v in shape)
        #: what the file computes in: "fp32" (an export) or "int8" (`ecgtrace export --int8`), from its metadata
        self.precision = precision
        self.input_name = session.get_inputs()[0].name
        self.output_names = [o.name for o in session.get_outputs()]

    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        arr = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        if arr.ndim != 4 or arr.shape[1:] != self.shape[1:]:
            raise EcgTraceError(f"{self.path} was exported for inputs of shape (N, {', '.join(map(str, self.shape[1:]))})"
                                f", got {tuple(arr.shape)}; export it again from the torch weights")
        outs = self.session.run(self.output_names, {self.input_name: arr})
        return {k: torch.from_numpy(v) for k, v in zip(self.output_names, outs)}

    # the torch module calls the stages make on a network, as no-ops
    def eval(self) -> OnnxNetwork:
        return self

    def to(self, *args: Any, **kwargs: Any) -> OnnxNetwork:
        return self


def _session(path: Path, device: str) -> Any:
    ort = _ort()
    so = ort.SessionOptions()
    so.intra_op_num_threads = max(1, torch.get_num_threads())  # what batch.set_threads gave this process
    so.inter_op_num_threads = 1
    so.log_severity_level = 3  # warnings of the graph optimizer are not the user's business
    providers = ["CPUExecutionProvider"]
    if str(device).startswith("cuda"):
        if "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        else:
            logger.warning(f"device {device}: this onnxruntime has no CUDA provider (pip install onnxruntime-gpu); "
                           "the ONNX network runs on the CPU")
    try:
        return ort.InferenceSession(str(path), so, providers=providers)
    except Exception as e:  # noqa: BLE001 - every failure gets one diagnosis line
        size = path.stat().st_size if path.exists() else -1
        msg = (str(e).splitlines() or [type(e).__name__])[0][:160]
        what = "is empty (0 bytes)" if size == 0 else f"is not a readable ONNX model ({size:,} bytes; {msg})"
        raise EcgTraceError(f"{path} {what}; export it again with `ecgtrace export CKPT --onnx --out FILE.onnx`") from e


def load_onnx_file(path: str | Path, device: str = "cpu", stage: int | None = None,
                   heads: tuple[str, ...] = ()) -> LoadedModel:
    """An ``.onnx`` file written by :func:`export_onnx`, ready to run; a foreign or damaged file is one line."""
    p = Path(path)
    if not p.is_file():
        raise EcgTraceError(f"ONNX file {p} not found; export one with `ecgtrace export CKPT --onnx --out FILE.onnx`")
    sess = _session(p, device)
    meta = dict(sess.get_modelmeta().custom_metadata_map or {})
    if PRETRAINED_CFG_KEY not in meta:
        raise EcgTraceError(f"{p} is an ONNX model without a pretrained_cfg (not written by `ecgtrace export`); "
                            "export the torch weights with `ecgtrace export CKPT --onnx --out FILE.onnx`")
    try:
        cfg = PretrainedCfg.from_dict(json.loads(meta[PRETRAINED_CFG_KEY]))
    except (ValueError, TypeError) as e:
        raise EcgTraceError(f"{p}: its pretrained_cfg metadata is not valid ({e}); export it again") from e
    check_fits(p, cfg, stage, heads)
    net = OnnxNetwork(sess, p, input_shape(cfg), precision=str(meta.get("precision") or "fp32"))
    return LoadedModel(model=net, cfg=cfg, path=p, epoch=int(meta.get("epoch", 0) or 0))  # type: ignore[arg-type]


def load_onnx_model(path: str | Path, device: str = "cpu", stage: int | None = None,
                    heads: tuple[str, ...] = ()) -> LoadedModel:
    """Any weights file run by onnxruntime: an ``.onnx`` file as it is, torch weights through the cache."""
    p = Path(path)
    return load_onnx_file(p if is_onnx_file(p) else cached_onnx(p), device, stage, heads)


# --------------------------------------------------------------------------- exporting
@dataclass
class OnnxExport:
    """What :func:`export_onnx` wrote, and how well it agrees with torch on a seeded input."""

    path: Path
    name: str
    stage: int | None
    shape: tuple[int, int, int, int]
    size_bytes: int
    max_logit_diff: float


def export_onnx(weights: str | Path, out: str | Path, name: str | None = None) -> OnnxExport:
    """Export the network of a torch weights file (``.pth`` or ``.safetensors``) to ``out`` (``.onnx``).

    The file records the ``pretrained_cfg`` in its metadata. Before it is kept, onnxruntime runs it
    on a seeded input and its logits must agree with torch's within :data:`LOGIT_TOLERANCE`.
    """
    src, out = Path(weights), Path(out)
    if out.suffix.lower() != ONNX_SUFFIX:
        raise EcgTraceError(f"the output {out} must end in {ONNX_SUFFIX}")
    if is_onnx_file(src):
        raise EcgTraceError(f"{src} is an ONNX file already; export from the torch weights (.pth or .safetensors)")
    try:
        import onnx
    except ImportError as e:
        raise EcgTraceError(f"exporting to ONNX needs the onnx package: {_INSTALL}") from e
    _ort()
    loaded = load_model(src, "cpu")
    model, cfg = loaded.model, loaded.cfg
    shape = input_shape(cfg)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = {k: v.float().numpy() for k, v in model(x).items()}
    heads = list(ref)
    if name is None and src.suffix.lower() == INFERENCE_SUFFIX:  # the exported file's own name
        name = (read_inference_file(src)["metadata"].get("name") or "") + "-onnx"
    name = name if name and name != "-onnx" else f"{src.stem}-onnx"
    meta = {PRETRAINED_CFG_KEY: json.dumps(cfg.to_dict()), "name": str(name), "epoch": str(loaded.epoch),
            "source": src.name, "ecgtrace_onnx_format": str(ONNX_FORMAT), "torch": torch.__version__}
    with atomic_write(out) as tmp:
        with warnings.catch_warnings():  # the tracer's notes on shapes it fixes: the export is for these shapes
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (x,), str(tmp), dynamo=False, input_names=[INPUT_NAME], output_names=heads,
                              dynamic_axes={k: {0: "batch"} for k in [INPUT_NAME, *heads]}, opset_version=OPSET)
        proto = onnx.load(str(tmp))
        for k, v in meta.items():
            proto.metadata_props.add(key=k, value=v)
        onnx.save(proto, str(tmp))
        got = OnnxNetwork(_session(tmp, "cpu"), tmp, shape)(x)
        checks = [logits_agree(got[k], ref[k]) for k in heads]
        diff = max(d for _, d in checks)
        if not all(ok for ok, _ in checks):
            raise EcgTraceError(f"the ONNX export of {src} differs from torch by {diff:.3g} on the logits "
                                f"(more than {LOGIT_TOLERANCE}); keep --backend torch for these weights")
    return OnnxExport(path=out, name=str(name), stage=cfg.stage, shape=shape, size_bytes=out.stat().st_size,
                      max_logit_diff=diff)


def cache_dir() -> Path:
    """Where ONNX exports of torch weights are kept: ``$ECGTRACE_CACHE_DIR/onnx`` (default ``~/.cache/ecgtrace``)."""
    root = os.environ.get("ECGTRACE_CACHE_DIR") or Path.home() / ".cache" / "ecgtrace"
    return Path(root) / "onnx"


def cached_onnx(weights: str | Path) -> Path:
    """The ONNX form of a torch weights file, exported into :func:`cache_dir` the first time it is asked for."""
    from ecgtrace import __version__
    from ecgtrace.models.shipped import file_sha256

    src = Path(weights)
    if not src.is_file():
        raise EcgTraceError(f"weights file {src} not found")
    key = hashlib.sha256(f"{file_sha256(src)}|{ONNX_FORMAT}|{torch.__version__}|{__version__}".encode())
    out = cache_dir() / f"{src.stem}-{key.hexdigest()[:16]}{ONNX_SUFFIX}"
    if not out.is_file():
        logger.info(f"exporting {src.name} to ONNX once (cached in {out.parent})")
        try:
            export_onnx(src, out)
        except OSError as e:
            raise EcgTraceError(f"cannot write the ONNX export to {out.parent} ({e.strerror or e}); "
                                "set ECGTRACE_CACHE_DIR to a writable folder") from e
    return out
