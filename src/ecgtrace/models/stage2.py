"""Stage 2 network: where the trace of one row passes in each pixel column of a rectified page.

The network reads one *row strip* at a time: the band of the rectified page from
``BAND_ABOVE_MV`` above a row's baseline to ``BAND_BELOW_MV`` below it, full page
width, full resolution (resolution is what moved the score most in prior work).
The four rows of a page (three 2.5 s lead rows + the rhythm strip) go through the
same weights as a batch of four, so the four-channel page output of the design is
the stack of the four strip outputs. CoordConv gives the network the strip's
vertical position, so it learns to follow the trace that belongs to *this* row
where a neighbouring row's peaks reach into the band.

Head ``trace``: one logit per pixel; a softmax down each column gives the
probability that the row's centre line crosses that column at that y.
:meth:`Stage2Model.row_logits` returns those column distributions for the four
rows of a page; reading them as one continuous path per row is the stage's job
(:mod:`ecgtrace.stages.trace.network`). :func:`decode_columns` is the simple
column-wise read the training metrics use.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ecgtrace.errors import EcgTraceError
from ecgtrace.models.backbone import register_model
from ecgtrace.models.checkpoint import PretrainedCfg, is_onnx_file, load_model
from ecgtrace.models.onnx_backend import onnxruntime_available
from ecgtrace.models.shipped import WeightsSource, int8_problem, shipped_entry, warn_once
from ecgtrace.models.batchnorm_fold import folded_for_inference
from ecgtrace.models.preprocess import MEAN_RGB, STD_RGB, resize_to_input, to_chw
from ecgtrace.models.unet import UNet
from ecgtrace.paper import BAND_ABOVE_MV, BAND_BELOW_MV, CANONICAL, N_ROWS, Page

TRACE_HEAD = "trace"
#: What the network computes in: ``"fp32"``, ``"bf16"`` (torch autocast), ``"int8"`` (the shipped int8 network, run
#: by onnxruntime) or ``"auto"``: int8 where it ships and runs well here (a CPU with 8-bit dot products and
#: onnxruntime installed), else bf16 on a CPU with native bfloat16 arithmetic, else fp32.
#: ``ECGTRACE_PRECISION`` overrides it.
PRECISIONS = ("auto", "fp32", "bf16", "int8")
#: Strips a CPU pass reads at once. The strips are independent (the shipped weights under bf16: the same logits
#: to the bit in any grouping; elsewhere another batch size may pick other kernels, the same to float rounding);
#: two at a time keep a layer's activations in cache: the 8 strips of a page with its mirrored read take
#: 0.66 s in passes of two, 0.66-0.71 s in passes of four, 0.81 s in one pass (two bf16 cores;
#: bench/bench_network.py).
CPU_STRIPS_PER_PASS = 2
#: Half-width (px) of the window around the column mode (or the path's span) used for the sub-pixel mean.
DECODE_RADIUS = 3


@register_model("stage2")
def stage2_unet(encoder_name: str = "resnet18", decoder_channels: list[int] | tuple[int, ...] = (256, 128, 64, 32, 16),
                pretrained: bool = False, weights: str = "", **kwargs: Any) -> UNet:
    """U-Net with one ``trace`` head at full input resolution, CoordConv on."""
    kwargs.setdefault("seg_heads", {TRACE_HEAD: 1})
    kwargs.setdefault("coord_conv", True)
    return UNet(encoder_name=encoder_name, decoder_channels=decoder_channels, pretrained=pretrained,
                weights=weights, **kwargs)


def build_stage2(cfg: Any) -> UNet:
    """Stage 2 model from a :class:`ecgtrace.config.Config`.

    One decoder block per encoder skip plus one, so the head is at stride 1 (a trace is 2 px thick).
    """
    bb = cfg.MODEL.BACKBONE
    dec = list(cfg.MODEL.DECODER_CHANNELS)
    if len(dec) == 4:  # the shared default has 4 blocks (stride 2 on resnets): add one for full resolution
        dec = dec + [max(8, dec[-1] // 2)]
    return stage2_unet(encoder_name=bb.NAME, decoder_channels=dec, pretrained=bool(bb.PRETRAINED), weights=bb.WEIGHTS)


# --------------------------------------------------------------------------- precision
@functools.lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX-512 BF16 or AMX); without it autocast is slower than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: no cheap way to tell, so fp32
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


@functools.lru_cache(maxsize=1)
def cpu_has_int8_dot() -> bool:
    """Whether this CPU has 8-bit dot-product instructions (VNNI, AMX, Arm's dot product).

    onnxruntime's int8 convolutions are fast with them; without them (AVX2 alone) its uint8 x int8 products
    can saturate, so ``auto`` does not pick int8 there."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags for f in ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp"))


def wanted_precision(precision: str | None = None) -> str:
    """One of :data:`PRECISIONS`: ``precision``, else ``$ECGTRACE_PRECISION``, else auto; a one-line error otherwise.

    A setting, not a property of the weights: a stage checks it before it opens its weights, so a typo
    stops the run instead of reading as an unusable file (which falls back to the classical path).
    """
    want = str(precision or os.environ.get("ECGTRACE_PRECISION") or "auto").lower()
    if want not in PRECISIONS:
        raise EcgTraceError(f"unknown precision {want!r} (ECGTRACE_PRECISION?); use one of {', '.join(PRECISIONS)}")
    return want


def resolve_precision(precision: str | None, device: str, is_torch: bool) -> str:
    """``"fp32"`` or ``"bf16"`` for a torch network on ``device``: ``precision`` (else ``$ECGTRACE_PRECISION``,
    else auto); ``"fp32"`` for an ONNX session (its file says if it is int8: :class:`Stage2Model` asks it)."""
    want = wanted_precision(precision)
    if not is_torch:
        return "fp32"
    if want == "int8":
        raise EcgTraceError("precision int8 runs the int8 ONNX network (`ecgtrace export --int8`), not torch weights; "
                            "use auto, fp32 or bf16 for these")
    if want == "auto":
        return "bf16" if str(device).startswith("cpu") and cpu_has_bf16() else "fp32"
    return want


def network_source(source: WeightsSource, device: str = "cpu", precision: str | None = None) -> WeightsSource:
    """The file stage 2's network is read from: the shipped int8 network where ``precision`` (else
    ``$ECGTRACE_PRECISION``) is ``int8``, or ``auto`` on a CPU that runs it well; else ``source``.

    ``int8`` asked for where it cannot run (no int8 network ships for these weights, another device,
    no onnxruntime) is a one-line error; ``auto`` then keeps ``source``. A damaged int8 file warns once
    and the float weights run. ``--backend onnx`` with ``auto`` keeps the float32 export it asks for.
    """
    want = wanted_precision(precision)
    if not source.uses_network or want in ("fp32", "bf16") or is_onnx_file(source.path or ""):
        return source  # an .onnx file (the user's, or the shipped int8 one) runs in what it was made in
    if source.kind != "shipped":
        if want == "int8":
            raise EcgTraceError(f"precision int8: {source.name} is torch weights; make its int8 form with "
                                f"`ecgtrace export {source.path} --int8 --out DIR/stage2_int8.onnx` and pass --checkpoints DIR")
        return source
    if want == "auto" and source.backend == "onnx":
        return source
    entry = shipped_entry(2, source.path.parent if source.path is not None else None)
    why = ("no int8 network ships with these weights" if entry is None or entry.int8_path is None
           or entry.sha256 != source.sha256 else
           "int8 runs on the CPU only" if not str(device).startswith("cpu") else
           "onnxruntime is not installed (pip install onnxruntime)" if not onnxruntime_available() else "")
    if why:
        if want == "int8":
            raise EcgTraceError(f"precision int8: {why}; use ECGTRACE_PRECISION=auto")
        return source
    if want == "auto" and not cpu_has_int8_dot():
        return source
    problem = int8_problem(entry)
    if problem:
        warn_once(f"shipped int8 stage-2 network unusable: {problem}; the float weights run instead "
                  "(reinstall ecgtrace to restore it)")
        return source
    return WeightsSource.int8_of(entry)


# --------------------------------------------------------------------------- strips
def strip_height(page: Page) -> int:
    """Pixel height of a row strip on ``page`` (a multiple of 8)."""
    h = (BAND_ABOVE_MV + BAND_BELOW_MV) * page.px_per_mv
    return int(np.ceil(h / 8.0) * 8)


def strip_top(page: Page, row: int) -> int:
    """Pixel y of the first strip row of ``row`` (may be negative near the page top)."""
    return int(np.floor(page.baseline_y(row) - BAND_ABOVE_MV * page.px_per_mv))


def row_strip(image: np.ndarray, page: Page, row: int) -> tuple[np.ndarray, int]:
    """The strip of ``row`` (H, W, 3), padded with the page's paper colour outside the image; and its top y."""
    h, w = image.shape[:2]
    top = strip_top(page, row)
    sh = strip_height(page)
    out = np.empty((sh, w, 3), np.uint8)
    out[:] = np.median(image[:: max(1, h // 64), :: max(1, w // 64)].reshape(-1, 3), axis=0).astype(np.uint8)
    a, b = max(0, top), min(h, top + sh)
    if b > a:
        out[a - top:b - top] = image[a:b]
    return out, top


def decode_columns(logits: torch.Tensor | np.ndarray, radius: int = DECODE_RADIUS) -> tuple[np.ndarray, np.ndarray]:
    """(H, W) logits of one strip -> (sub-pixel y per column, confidence = probability mass near the mode)."""
    t = torch.as_tensor(logits).float()
    p = torch.softmax(t, dim=0)
    mode = p.argmax(dim=0)
    offs = torch.arange(-radius, radius + 1, device=p.device)
    idx = (mode[None, :] + offs[:, None]).clamp(0, p.shape[0] - 1)
    w = torch.gather(p, 0, idx)
    y = (w * idx.float()).sum(0) / w.sum(0).clamp_min(1e-8)
    return y.cpu().numpy().astype(np.float64), w.sum(0).cpu().numpy().astype(np.float64)


@dataclass
class RowLogits:
    """The network's reading of a page's four rows: log-probabilities down each pixel column."""

    logits: torch.Tensor  # (N_ROWS, strip height, model page width): log-probabilities down each column, up to a
    # constant per column (a softmax over the height gives the probabilities)
    tops: list[int]  # y of each strip's first row on the model's page
    page: Page  # the geometry of the page the model ran on
    scale: tuple[float, float]  # (sx, sy): input-page px per model-page px


class Stage2Model:
    """A trained stage-2 network wrapped for inference on rectified pages."""

    def __init__(self, model: torch.nn.Module, page_size: tuple[int, int], device: str = "cpu",
                 tta: bool = True, cfg: PretrainedCfg | None = None, precision: str | None = None) -> None:
        self.model = model
        self.page_size = (int(page_size[0]), int(page_size[1]))
        self.device = device
        self.cfg = cfg
        self.mean = np.asarray(cfg.mean if cfg is not None else MEAN_RGB, np.float32)
        self.std = np.asarray(cfg.std if cfg is not None else STD_RGB, np.float32)
        #: also read the strips mirrored in time and average the column probabilities (+0.3 dB on
        #: clean pages, twice the network time)
        self.tta = tta
        # a torch network runs channels-last: its convolutions take 0.64 s a pass instead of 0.88 on
        # two CPU cores (4 strips of the 100 dpi page; an ONNX session keeps its own layout)
        is_torch = isinstance(model, torch.nn.Module)
        self.channels_last = is_torch
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        #: bf16 autocast halves a pass on a CPU with native bfloat16 (0.75 -> 0.40 s, 4 strips, two cores);
        #: an ONNX network computes in what its file was made in (fp32, or int8)
        self.precision = (resolve_precision(precision, device, is_torch) if is_torch
                          else str(getattr(model, "precision", "fp32")))

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        """The trace logits of a batch of strips, in float32 whatever the network computed in."""
        bf16 = self.precision == "bf16"
        with torch.autocast(device_type=str(self.device).split(":")[0], dtype=torch.bfloat16, enabled=bf16):
            return self.model(x)[TRACE_HEAD][:, 0].float()

    def _forward_chunked(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`_forward` of a batch of strips, :data:`CPU_STRIPS_PER_PASS` at a time on a CPU (all at once elsewhere)."""
        n = CPU_STRIPS_PER_PASS if str(self.device).startswith("cpu") else len(x)
        if len(x) <= n:
            return self._forward(x)
        return torch.cat([self._forward(x[i:i + n]) for i in range(0, len(x), n)])

    def model_page(self, rect_bgr: np.ndarray) -> np.ndarray:
        """``rect_bgr`` at the page size the network reads (its 100 dpi page for the CPU models)."""
        return resize_to_input(rect_bgr, self.page_size)

    @torch.no_grad()
    def row_logits(self, rect_bgr: np.ndarray) -> RowLogits:
        """Column log-probabilities of the four row strips of a rectified page (any size of its aspect)."""
        h0, w0 = rect_bgr.shape[:2]
        ph, pw = self.page_size
        img = self.model_page(rect_bgr)
        page = CANONICAL.scaled_to(pw)
        strips, tops = [], []
        for r in range(N_ROWS):
            s, top = row_strip(img, page, r)
            strips.append(to_chw(s, self.mean, self.std))
            tops.append(top)
        x = torch.from_numpy(np.stack(strips)).to(self.device)
        if self.tta:  # the mirrored strips go through with the others, in the same chunks
            x = torch.cat([x, torch.flip(x, [3])])
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        out = self._forward_chunked(x)
        if self.tta:
            out, flipped = out[:N_ROWS], out[N_ROWS:].flip(-1)
            out = torch.log((torch.softmax(out, 1) + torch.softmax(flipped, 1)) / 2 + 1e-12)
        return RowLogits(logits=out, tops=tops, page=page, scale=(w0 / pw, h0 / ph))


def load_stage2(path: str | Path, device: str = "cpu", backend: str = "torch",
                precision: str | None = None) -> Stage2Model:
    """Load a ``stage2_*.pth`` checkpoint (or exported / ONNX weights) for inference; ``precision``: see
    :data:`PRECISIONS` (default ``$ECGTRACE_PRECISION``, else auto)."""
    net = load_model(path, device, stage=2, heads=(TRACE_HEAD,), backend=backend)
    model = net.model
    if isinstance(model, torch.nn.Module):  # BatchNorm folded into the convolutions: a pass 11 % faster
        # (a probe of the channels row_logits feeds it: one per normalisation entry)
        probe = torch.randn(1, len(net.cfg.mean), 64, 128, generator=torch.Generator().manual_seed(0)).to(device)
        model = folded_for_inference(model, probe)
    return Stage2Model(model, net.cfg.input_size, device=device, cfg=net.cfg, precision=precision)
