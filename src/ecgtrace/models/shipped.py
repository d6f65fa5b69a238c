"""The weights that install with the package, and where each stage's weights come from.

``src/ecgtrace/weights/`` (package data) holds, per stage that ships a model, one
inference-only file ``stage{K}.safetensors`` (fp16 tensors, the ``pretrained_cfg`` as
JSON in its metadata) and ``manifest.json``::

    {"format": 1,
     "weights": {"2": {"file": "stage2.safetensors", "name": "...", "sha256": "...",
                       "pretrained_cfg": {...}, "parameters": N, "size_bytes": N,
                       "trained": {"command": "...", "data": "...", "commit": "..."},
                       "figures": {...},
                       "int8": {"file": "stage2-int8.onnx", "name": "...", "sha256": "...",
                                "size_bytes": N, "calibration": "...", "figures": {...}}}}}

``int8`` (optional) is the same network quantized for onnxruntime (``ecgtrace export --int8 --ship``),
made from exactly the weights of its entry; a stage reads it instead where its precision says so
(:func:`ecgtrace.models.stage2.network_source`). Shipping new weights for the stage drops it.

Per stage the weights come from (:func:`resolve_weights`): a checkpoint found in the
``--checkpoints`` folder, else the shipped file, else the classical path; ``classical=True``
forces the classical path. A shipped file that is missing, damaged or does not match its
sha256 is one warning line and that stage runs its classical path: an install never fails
to read pictures because of its own weights. A file the user names stays an error.

``ECGTRACE_WEIGHTS_DIR`` points the shipped folder elsewhere (tests, a second set).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, TypeVar

import torch
from loguru import logger

from ecgtrace.errors import EcgTraceError
from ecgtrace.io import atomic_write
from ecgtrace.models.checkpoint import (
    INFERENCE_FORMAT,
    INFERENCE_SUFFIX,
    ONNX_SUFFIX,
    PRETRAINED_CFG_KEY,
    PretrainedCfg,
    build_model,
    find_checkpoint,
    is_onnx_file,
    load_weights,
    load_weights_file,
    pretrained_cfg_of,
)

#: Environment variable that replaces the shipped weights folder.
WEIGHTS_DIR_ENV = "ECGTRACE_WEIGHTS_DIR"
MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 1
#: Hex digits of a sha256 shown in reports, overlay titles and listings.
SHA_PREFIX = 8
#: What the shipped folder may hold in all (the git tree carries it).
SIZE_BUDGET_BYTES = 40_000_000
#: Largest magnitude fp16 holds; a tensor beyond it is stored in float32 instead.
_FP16_MAX = 65504.0
STAGES = (0, 1, 2)

T = TypeVar("T")


def weights_dir() -> Path:
    """The shipped weights folder: ``$ECGTRACE_WEIGHTS_DIR`` if set, else ``ecgtrace/weights`` (package data)."""
    env = os.environ.get(WEIGHTS_DIR_ENV, "").strip()
    return Path(env) if env else Path(__file__).resolve().parents[1] / "weights"


def shipped_file_name(stage: int) -> str:
    """File name of stage ``stage``'s shipped weights."""
    return f"stage{int(stage)}{INFERENCE_SUFFIX}"


# --------------------------------------------------------------------------- manifest
@dataclass
class ShippedEntry:
    """One stage's shipped weights, as the manifest lists them."""

    stage: int
    file: str
    name: str
    sha256: str
    pretrained_cfg: dict[str, Any]
    parameters: int = 0
    size_bytes: int = 0
    trained: dict[str, str] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)
    folder: Path = field(default_factory=weights_dir)
    int8: dict[str, Any] = field(default_factory=dict)  # the int8 ONNX form of these weights, if it ships

    @property
    def path(self) -> Path:
        return self.folder / self.file

    @property
    def int8_path(self) -> Path | None:
        return self.folder / str(self.int8["file"]) if self.int8 else None

    @property
    def sha256_prefix(self) -> str:
        return self.sha256[:SHA_PREFIX]

    def to_dict(self) -> dict[str, Any]:
        """The manifest entry (without the stage key and folder)."""
        d = {"file": self.file, "name": self.name, "sha256": self.sha256, "pretrained_cfg": self.pretrained_cfg,
             "parameters": int(self.parameters), "size_bytes": int(self.size_bytes),
             "trained": dict(self.trained), "figures": dict(self.figures)}
        if self.int8:
            d["int8"] = dict(self.int8)
        return d

    @classmethod
    def from_dict(cls, stage: int, d: dict[str, Any], folder: Path) -> ShippedEntry:
        """Inverse of :meth:`to_dict`; a missing required key raises ``KeyError``."""
        return cls(stage=int(stage), file=str(d.get("file") or shipped_file_name(stage)), name=str(d["name"]),
                   sha256=str(d["sha256"]).lower(), pretrained_cfg=dict(d.get("pretrained_cfg") or {}),
                   parameters=int(d.get("parameters") or 0), size_bytes=int(d.get("size_bytes") or 0),
                   trained={str(k): str(v) for k, v in (d.get("trained") or {}).items()},
                   figures=dict(d.get("figures") or {}), folder=folder, int8=_int8_entry(d.get("int8")))


def _int8_entry(d: Any) -> dict[str, Any]:
    """A manifest entry's ``int8`` part, checked for what reading it needs (``KeyError`` / ``TypeError`` if not)."""
    if not d:
        return {}
    out = dict(d)
    out["file"], out["name"], out["sha256"] = str(d["file"]), str(d["name"]), str(d["sha256"]).lower()
    out["size_bytes"] = int(d.get("size_bytes") or 0)
    return out


@dataclass
class Manifest:
    """What ships: ``weights[stage]``; ``problem`` says why an unreadable manifest reads as empty."""

    folder: Path
    weights: dict[int, ShippedEntry] = field(default_factory=dict)
    format: int = MANIFEST_FORMAT
    problem: str = ""

    @property
    def path(self) -> Path:
        return self.folder / MANIFEST_NAME

    def to_dict(self) -> dict[str, Any]:
        return {"format": self.format, "weights": {str(k): e.to_dict() for k, e in sorted(self.weights.items())}}


_WARNED: set[str] = set()


def warn_once(msg: str) -> None:
    """One warning line per distinct problem per process (a pipeline built twice does not repeat it)."""
    if msg not in _WARNED:
        _WARNED.add(msg)
        logger.warning(msg)


def read_manifest(folder: str | Path | None = None) -> Manifest:
    """The manifest of ``folder`` (default :func:`weights_dir`); never raises.

    No manifest means nothing ships; an unreadable one warns once and reads as empty.
    """
    d = Path(folder) if folder is not None else weights_dir()
    man = Manifest(folder=d)
    if not man.path.is_file():
        return man
    try:
        raw = json.loads(man.path.read_text())
        man.format = int(raw.get("format", MANIFEST_FORMAT))
        if man.format > MANIFEST_FORMAT:
            raise ValueError(f"manifest format {man.format} is newer than this ecgtrace reads ({MANIFEST_FORMAT})")
        for k, v in (raw.get("weights") or {}).items():
            if int(k) not in STAGES:
                raise ValueError(f"unknown stage {k!r}")
            man.weights[int(k)] = ShippedEntry.from_dict(int(k), v, d)
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
        man.weights = {}
        man.problem = f"{man.path} cannot be read ({type(e).__name__}: {e})"
        warn_once(f"{man.problem}; no shipped weights are used (reinstall ecgtrace to restore it)")
    return man


def write_manifest(manifest: Manifest) -> Path:
    """Write ``manifest`` atomically to its folder."""
    manifest.folder.mkdir(parents=True, exist_ok=True)
    with atomic_write(manifest.path) as tmp:
        tmp.write_text(json.dumps(manifest.to_dict(), indent=2) + "\n")
    return manifest.path


def shipped_entry(stage: int, folder: str | Path | None = None) -> ShippedEntry | None:
    """The manifest entry of ``stage``, or None when nothing ships for it."""
    return read_manifest(folder).weights.get(int(stage))


# --------------------------------------------------------------------------- checks
_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file (cached per path, size and mtime: a pipeline built twice hashes once)."""
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _SHA_CACHE[key] = h.hexdigest()
    return _SHA_CACHE[key]


def _file_problem(p: Path, size_bytes: int, sha256: str) -> str | None:
    if not p.is_file():
        return f"{p} is missing (the manifest lists it)"
    size = p.stat().st_size
    if size_bytes and size != size_bytes:
        return f"{p} has {size:,} bytes, the manifest says {size_bytes:,} (truncated or replaced)"
    sha = file_sha256(p)
    if sha != sha256:
        return f"{p} does not match its sha256 (file {sha[:SHA_PREFIX]}, manifest {sha256[:SHA_PREFIX]})"
    return None


def shipped_problem(entry: ShippedEntry) -> str | None:
    """What is wrong with a shipped file (missing, wrong size, sha256 mismatch), or None when it is intact."""
    return _file_problem(entry.path, entry.size_bytes, entry.sha256)


def int8_problem(entry: ShippedEntry) -> str | None:
    """What is wrong with an entry's shipped int8 file (as :func:`shipped_problem`); None when intact or none ships."""
    if entry.int8_path is None:
        return None
    return _file_problem(entry.int8_path, int(entry.int8.get("size_bytes") or 0), str(entry.int8["sha256"]))


# --------------------------------------------------------------------------- where weights come from
@dataclass(frozen=True)
class WeightsSource:
    """Where one stage's weights come from.

    Attributes:
        kind: ``"shipped"`` (installed with the package), ``"checkpoint"`` (a file the user gave)
            or ``"classical"`` (no network).
        name: the shipped name, or the checkpoint's file name.
        sha256: hex digest of the file ("" on the classical path).
        path: the file (None on the classical path).
        stage: the stage these weights are for.
        note: why the classical path runs when weights were expected (a damaged shipped file ...).
        backend: what runs the network: ``"torch"`` or ``"onnx"`` (onnxruntime; an ``.onnx`` file always).
    """

    kind: str = "classical"
    name: str = ""
    sha256: str = ""
    path: Path | None = None
    stage: int | None = None
    note: str = ""
    backend: str = "torch"

    @property
    def sha256_prefix(self) -> str:
        return self.sha256[:SHA_PREFIX]

    @property
    def uses_network(self) -> bool:
        return self.kind != "classical"

    def label(self) -> str:
        """Short text for reports and overlay titles: ``shipped NAME (ab12cd34)``, ``classical``."""
        if self.kind == "classical":
            return "classical"
        return f"{self.kind} {self.name} ({self.sha256_prefix})" + (" [onnx]" if self.backend == "onnx" else "")

    def to_dict(self) -> dict[str, Any]:
        """JSON form for the report (sha256 as its prefix)."""
        d: dict[str, Any] = {"kind": self.kind, "name": self.name or None, "sha256": self.sha256_prefix or None,
                             "path": str(self.path) if self.path else None}
        if self.note:
            d["note"] = self.note
        if self.uses_network:
            d["backend"] = self.backend
        return d

    @classmethod
    def from_checkpoint(cls, path: str | Path, stage: int | None = None) -> WeightsSource:
        """A file the user gave (its sha256 only when it exists: a missing one is the loader's error)."""
        p = Path(path)
        return cls(kind="checkpoint", name=p.name, sha256=file_sha256(p) if p.is_file() else "", path=p, stage=stage,
                   backend="onnx" if is_onnx_file(p) else "torch")

    @classmethod
    def from_entry(cls, entry: ShippedEntry) -> WeightsSource:
        return cls(kind="shipped", name=entry.name, sha256=entry.sha256, path=entry.path, stage=entry.stage)

    @classmethod
    def int8_of(cls, entry: ShippedEntry) -> WeightsSource:
        """The shipped int8 form of ``entry``'s weights (run by onnxruntime); the entry must list one."""
        if entry.int8_path is None:
            raise EcgTraceError(f"no int8 network ships for stage {entry.stage} ({entry.folder / MANIFEST_NAME})")
        return cls(kind="shipped", name=str(entry.int8["name"]), sha256=str(entry.int8["sha256"]),
                   path=entry.int8_path, stage=entry.stage, backend="onnx")


def as_source(checkpoint: str | Path | WeightsSource | None, stage: int | None = None,
              backend: str = "torch") -> WeightsSource:
    """What a stage constructor was given, as a :class:`WeightsSource` (None = classical, a path = a checkpoint).

    ``backend="onnx"``: its network runs with onnxruntime (checked here, so a missing onnxruntime is
    one line before anything loads, not a silent fall back to the classical path).
    """
    if isinstance(checkpoint, WeightsSource):
        src = checkpoint
    elif checkpoint is None or str(checkpoint) == "":
        src = WeightsSource(stage=stage)
    else:
        src = WeightsSource.from_checkpoint(checkpoint, stage)
    if str(backend).lower() != "torch":
        from ecgtrace.models.onnx_backend import check_backend

        if check_backend(backend) == "onnx" and src.uses_network:
            src = replace(src, backend="onnx")
    return src


def _fallback(stage: int, what: str) -> WeightsSource:
    warn_once(f"shipped stage-{stage} weights unusable: {what}; stage {stage} uses its classical path "
               "(reinstall ecgtrace to restore the file, or pass --checkpoints DIR)")
    return WeightsSource(kind="classical", stage=stage, note=f"shipped weights unusable: {what}")


def resolve_weights(stage: int, checkpoints: str | Path | None = None, classical: bool = False,
                    folder: str | Path | None = None) -> WeightsSource:
    """Where stage ``stage``'s weights come from: a checkpoint in ``checkpoints`` (a folder or a file),
    else the shipped file, else the classical path; ``classical=True`` forces the classical path.

    A user's folder that does not exist is an error; a damaged shipped file is one warning and
    the classical path (``note`` says why).
    """
    if classical:
        return WeightsSource(stage=stage)
    found = find_checkpoint(checkpoints, stage)
    if found is not None:
        return WeightsSource.from_checkpoint(found, stage)
    entry = shipped_entry(stage, folder)
    if entry is None:
        return WeightsSource(stage=stage)
    problem = shipped_problem(entry)
    if problem:
        return _fallback(stage, problem)
    return WeightsSource.from_entry(entry)


def open_weights(source: WeightsSource, load: Callable[[Path], T]) -> tuple[T | None, WeightsSource]:
    """Run ``load(path)`` for ``source``: (loaded thing, source), or (None, classical source).

    A checkpoint the user gave fails loudly (its one-line error); shipped weights that fail to
    load (or to verify) warn once and return the classical path.
    """
    if source.kind == "classical" or source.path is None:
        return None, source
    if source.kind != "shipped":
        return load(source.path), source
    stage = source.stage if source.stage is not None else -1
    try:
        if file_sha256(source.path) != source.sha256:
            return None, _fallback(stage, f"{source.path} does not match its sha256")
        return load(source.path), source
    except Exception as e:  # noqa: BLE001 - shipped weights never stop a picture from being read
        return None, _fallback(stage, str(e).splitlines()[0] if str(e) else type(e).__name__)


# --------------------------------------------------------------------------- export
@dataclass
class ExportResult:
    """What :func:`export_weights` wrote."""

    path: Path
    name: str
    stage: int | None
    sha256: str
    size_bytes: int
    parameters: int
    cfg: PretrainedCfg
    epoch: int = 0
    fp32_tensors: list[str] = field(default_factory=list)  # kept in float32 (beyond the fp16 range)


def inference_state(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """A state dict in fp16 (floating tensors; integer buffers unchanged), contiguous and unshared.

    A tensor with values beyond the fp16 range stays float32 (its names are returned), so the
    export never turns a weight into inf.
    """
    out, kept = {}, []
    for k, v in state.items():
        t = v.detach().cpu()
        if t.is_floating_point():
            if t.numel() and float(t.abs().max()) > _FP16_MAX:
                kept.append(k)
                t = t.float()
            else:
                t = t.half()
        out[k] = t.contiguous().clone()
    return out, kept


def default_name(cfg: PretrainedCfg, epoch: int = 0) -> str:
    """``stage2-resnet18-850x1100-e12``: stage, encoder, input size, epoch."""
    enc = str(cfg.arch_kwargs.get("encoder_name") or cfg.architecture or "model")
    stage = "x" if cfg.stage is None else str(cfg.stage)
    return f"stage{stage}-{enc}-{cfg.input_size[0]}x{cfg.input_size[1]}" + (f"-e{epoch}" if epoch else "")


def export_weights(ckpt_path: str | Path, out: str | Path, name: str | None = None) -> ExportResult:
    """Turn a training checkpoint (``.pth``; or an exported ``.safetensors``) into an inference-only fp16
    ``.safetensors`` file with the ``pretrained_cfg`` in its metadata; checks the weights fit the
    recorded architecture first. Errors are one line."""
    from safetensors.torch import save_file

    src = Path(ckpt_path)
    out = Path(out)
    if out.suffix.lower() != INFERENCE_SUFFIX:
        raise EcgTraceError(f"the output {out} must end in {INFERENCE_SUFFIX}")
    ckpt = load_weights_file(src)
    cfg = pretrained_cfg_of(ckpt)
    model = build_model(cfg)  # proves the description rebuilds, and that the weights fit it
    load_weights(model, ckpt, f"{src}: the weights do not fit the architecture recorded with them",
                 "check the file with `ecgtrace check --test CKPT`")
    state, kept = inference_state(model.state_dict())
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise EcgTraceError(f"{src}: {len(bad)} weight tensors hold NaN/inf (e.g. {bad[0]}); export an earlier "
                            "epoch's checkpoint")
    epoch = int(ckpt.get("epoch", 0) or 0)
    name = name or (ckpt.get("metadata") or {}).get("name") or default_name(cfg, epoch)
    meta = {"format": "pt", "ecgtrace_format": str(INFERENCE_FORMAT), PRETRAINED_CFG_KEY: json.dumps(cfg.to_dict()),
            "name": str(name), "epoch": str(epoch), "source": src.name}
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(out) as tmp:
        save_file(state, str(tmp), metadata=meta)
    n_params = sum(p.numel() for p in model.parameters())
    return ExportResult(path=out, name=str(name), stage=cfg.stage, sha256=file_sha256(out),
                        size_bytes=out.stat().st_size, parameters=int(n_params), cfg=cfg, epoch=epoch,
                        fp32_tensors=kept)


def ship_weights(ckpt_path: str | Path, name: str | None = None, trained: dict[str, str] | None = None,
                 figures: dict[str, Any] | None = None, folder: str | Path | None = None) -> ShippedEntry:
    """Export ``ckpt_path`` to ``{folder}/stage{K}.safetensors`` and write its manifest entry (replacing the old)."""
    d = Path(folder) if folder is not None else weights_dir()
    peek = pretrained_cfg_of(load_weights_file(ckpt_path))
    if peek.stage not in STAGES:
        raise EcgTraceError(f"{ckpt_path} records no pipeline stage (stage {peek.stage}); only stage 0/1/2 "
                            "networks can ship")
    man = read_manifest(d)
    if man.problem:
        raise EcgTraceError(f"{man.problem}; fix or delete it before shipping")
    res = export_weights(ckpt_path, d / shipped_file_name(peek.stage), name=name)
    old = man.weights.get(int(peek.stage))
    if old is not None and old.int8_path is not None and old.int8_path.is_file():
        # quantized from the weights just replaced: it would read pages as the old network did
        old.int8_path.unlink()
        logger.info(f"removed {old.int8_path.name}, the int8 form of the replaced weights; make the new one with "
                    f"`ecgtrace export {shipped_file_name(peek.stage)} --int8 --ship`")
    entry = ShippedEntry(stage=int(peek.stage), file=res.path.name, name=res.name, sha256=res.sha256,
                         pretrained_cfg=res.cfg.to_dict(), parameters=res.parameters, size_bytes=res.size_bytes,
                         trained=dict(trained or {}), figures=dict(figures or {}), folder=d)
    man.weights[entry.stage] = entry
    write_manifest(man)
    return entry


def ship_int8(onnx_path: str | Path, int8: dict[str, Any], folder: str | Path | None = None) -> ShippedEntry:
    """Copy an int8 ONNX file (:func:`ecgtrace.train.quantize.quantize_stage2`) into the shipped folder as
    ``stage{K}-int8.onnx`` and record it (``int8``: its figures and calibration) in its stage's manifest entry.

    The file must have been made from the stage's shipped weights (``source_sha256`` in ``int8``)."""
    import shutil

    d = Path(folder) if folder is not None else weights_dir()
    src = Path(onnx_path)
    man = read_manifest(d)
    if man.problem:
        raise EcgTraceError(f"{man.problem}; fix or delete it before shipping")
    stage = int(int8.get("stage", 2))
    entry = man.weights.get(stage)
    if entry is None:
        raise EcgTraceError(f"no stage-{stage} weights ship in {d}; ship the float weights first (`ecgtrace export "
                            "CKPT --ship`), then their int8 form")
    if int8.get("source_sha256") != entry.sha256:
        raise EcgTraceError(f"the int8 network was made from other weights than the shipped {entry.file}; make it "
                            f"from the shipped file: `ecgtrace export {entry.path} --int8 --ship`")
    dst = d / f"stage{stage}-int8{ONNX_SUFFIX}"
    with atomic_write(dst) as tmp:
        shutil.copyfile(src, tmp)
    entry.int8 = {**int8, "file": dst.name, "sha256": file_sha256(dst), "size_bytes": dst.stat().st_size}
    write_manifest(man)
    return entry


def folder_size(folder: str | Path | None = None) -> int:
    """Bytes of the weights files in the shipped folder (the float weights and their int8 forms)."""
    d = Path(folder) if folder is not None else weights_dir()
    if not d.is_dir():
        return 0
    return sum(p.stat().st_size for suffix in (INFERENCE_SUFFIX, ONNX_SUFFIX) for p in d.glob(f"*{suffix}"))


def load_init_weights(model: torch.nn.Module, init: str, stage: int | None) -> Path:
    """Load ``MODEL.INIT`` into ``model`` for fine-tuning: ``"shipped"`` (this stage's shipped weights), a ``.pth``
    checkpoint or an exported ``.safetensors``. Returns the file used; a mismatch is a one-line error."""
    if init.strip().lower() == "shipped":
        if stage not in STAGES:
            raise EcgTraceError("MODEL.INIT=shipped needs a stage 0/1/2 run")
        entry = shipped_entry(int(stage))
        if entry is None:
            raise EcgTraceError(f"MODEL.INIT=shipped: no weights ship for stage {stage} ({weights_dir()}); "
                                "`ecgtrace models` lists what ships; give a checkpoint path instead")
        problem = shipped_problem(entry)
        if problem:
            raise EcgTraceError(f"MODEL.INIT=shipped: {problem}; reinstall ecgtrace or give a checkpoint path")
        path, what = entry.path, f"MODEL.INIT=shipped ({entry.name})"
    else:
        path, what = Path(init), f"MODEL.INIT={init}"
    ckpt = load_weights_file(path)
    cfg = pretrained_cfg_of(ckpt)
    if cfg.stage is not None and stage is not None and cfg.stage != stage:
        raise EcgTraceError(f"{what} holds stage-{cfg.stage} weights; this run trains stage {stage}")
    own = dict((getattr(model, "arch", None) or {}).get("kwargs") or {})
    differs = [k for k in ("encoder_name", "decoder_channels") if k in own and k in cfg.arch_kwargs
               and own[k] != cfg.arch_kwargs[k]]
    if differs:
        raise EcgTraceError(f"{what} has another architecture ("
                            + ", ".join(f"{k} {cfg.arch_kwargs[k]} vs this run's {own[k]}" for k in differs)
                            + "); set MODEL.BACKBONE.NAME / MODEL.DECODER_CHANNELS to match (`ecgtrace models` "
                              "and `ecgtrace check --test FILE` print them)")
    load_weights(model, ckpt, f"{what} does not fit this model",
                 "use the MODEL.* settings it was trained with (`ecgtrace check --test FILE` prints them)")
    return path
