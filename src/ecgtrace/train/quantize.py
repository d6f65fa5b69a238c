"""The stage-2 network in int8 for onnxruntime: calibrated on our own renders, checked on others, written as data.

On a CPU with 8-bit dot products (AVX-512 VNNI, AVX-VNNI) onnxruntime runs the int8 network in
under half the time of the float32 one (0.38 against 0.89 s a page on two cores, the manifest's
``network_seconds_per_page``; 0.52 before :mod:`ecgtrace.train.graph_passes`; on AVX2 alone it is no
faster, so it runs only where those instructions are: ``ecgtrace.models.stage2``); the network's
reading of a page barely moves when the convolutions that work at full and half resolution stay
in float32 (a tenth of the work, and where the sub-pixel position is made). :func:`quantize_stage2`
does it:

1. the torch weights are exported to ONNX (float32, checked against torch:
   :func:`ecgtrace.models.onnx_backend.export_onnx`);
2. activation ranges come from the row strips of ``calibration_pages`` pages of our own
   renderer (every variant, GT-rectified as in training; each strip also mirrored, as the
   stage reads them), never from a measuring set;
3. weights per output channel in int8, activations in uint8 (onnxruntime's QOperator form); the graph then
   rewritten to compute the same in less time (:mod:`ecgtrace.train.graph_passes`: no conversion back to
   float32 that only a Shape reads; the last decoder block and the head on the coarse grid, kept only where
   its outputs match the unrewritten graph's to :data:`FOLD_TOLERANCE`);
4. the int8 network and the float32 one read the strips of ``check_pages`` other renders, and
   the column positions they decode must agree (:data:`MAX_MEAN_SHIFT_PX`), else nothing is written.

The file carries the same ``pretrained_cfg`` as the weights it came from, ``precision=int8`` and
how it was calibrated, in its metadata. Rendering pages is training-side work, so this module
lives in ``train/``; running the file is :mod:`ecgtrace.models.onnx_backend`'s.
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ecgtrace.errors import EcgTraceError
from ecgtrace.io import atomic_write
from ecgtrace.models.checkpoint import ONNX_SUFFIX, load_model
from ecgtrace.train.graph_passes import drop_shape_only_dequantize, fold_upsampled_tail

#: Decoder blocks that work at this stride or finer stay float32 (with the heads): the trace's sub-pixel
#: position is made there. For the shipped network, float32 from stride 2 on: its columns 0.081 px from
#: float32's on the check strips; from stride 1 on: 0.085 px and 10 % less time; only the head: 0.088 px.
#: The first convolution of the coarsest of those blocks stays int8 all the same (:func:`float_nodes`).
FLOAT_STRIDE = 2
#: The int8 network's decoded column positions may differ from float32's by this much on average (px of the
#: 100 dpi strip) on the check pages; the shipped network's differ by 0.081.
MAX_MEAN_SHIFT_PX = 0.15
#: The rewritten last decoder block and head (:func:`~ecgtrace.train.graph_passes.fold_upsampled_tail`) must give
#: the logits of the graph before it to this much (float rounding: under 1e-5 on the shipped network).
FOLD_TOLERANCE = 1e-3
#: Seeds of the renders used: calibration and check pages never overlap, nor meet a training seed.
CALIBRATION_SEED = 4242
CHECK_SEED = 5353


@dataclass
class Int8Export:
    """What :func:`quantize_stage2` wrote, and how closely the int8 network reads like float32."""

    path: Path
    name: str
    size_bytes: int
    calibration: str  # how the activation ranges were found
    float_nodes: list[str]  # convolutions kept in float32
    mean_shift_px: float  # mean |y int8 - y float32| of the decoded columns on the check strips
    share_over_1px: float  # share of those columns more than 1 px apart
    max_logit_diff: float
    folded_tail: bool  # the last decoder block and head run on the coarse grid (graph_passes.fold_upsampled_tail)


def calibration_strips(n_pages: int, seed: int, page_size: tuple[int, int], mirrored: bool = True) -> np.ndarray:
    """(8 n, 3, H, W) float32: the four row strips of ``n_pages`` renders (every variant in turn), then each
    mirrored (without ``mirrored``: (4 n, ...), the plain strips alone)."""
    from ecgtrace.data.synthetic import available_variants
    from ecgtrace.train.stage2 import Stage2Pages

    pages = Stage2Pages(n_pages, seed, page_size, variants=available_variants(), crop=False, fresh_per_epoch=False)
    strips = np.concatenate([pages[i]["image"].numpy() for i in range(n_pages)])
    if mirrored:
        strips = np.concatenate([strips, strips[..., ::-1]])
    return np.ascontiguousarray(strips, dtype=np.float32)


def float_nodes(model, n_blocks: int, final_stride: float) -> list[str]:
    """Names of the Conv nodes of an exported U-Net that stay float32: decoder blocks at :data:`FLOAT_STRIDE` or
    finer, less the first convolution of the coarsest of them, and every Conv that writes a graph output (the heads).

    That first convolution reads the concatenation of the coarser decoder's output and the encoder's skip, both
    int8 and four times its own output's channels: kept int8, it is its output that goes back to float32, not
    that wide input (shipped network: 10-15 % less time a pass, its columns 0.0812 px from float32's against
    0.0809; transfer bench 23.81 dB both, own bench 18.56 -> 18.55)."""
    keep = {i for i in range(n_blocks) if final_stride * 2 ** (n_blocks - 1 - i) <= FLOAT_STRIDE}
    first = f"/decoder.{min(keep)}/conv1/" if keep else None
    outputs = {o.name for o in model.graph.output}
    names = []
    for node in model.graph.node:
        if node.op_type != "Conv":
            continue
        if outputs & set(node.output) or (any(f"/decoder.{i}/" in node.name for i in keep)
                                          and not node.name.startswith(first)):
            names.append(node.name)
    return names


def decoded_rows(logits: np.ndarray | torch.Tensor) -> np.ndarray:
    """(rows, width) decoded y per column of a stack of row-strip logits (:func:`~ecgtrace.models.stage2.decode_columns`
    of each): what the int8 check, and ``bench/bench_onnx.py``, compare between two networks."""
    from ecgtrace.models.stage2 import decode_columns

    return np.stack([decode_columns(lg)[0] for lg in logits])


def _folded_if_same(proto, strips: np.ndarray, tmp: Path):
    """``proto`` with its upsampled tail folded (:func:`fold_upsampled_tail`) when the folded graph's logits on
    ``strips`` are within :data:`FOLD_TOLERANCE` of the unfolded one's; else ``proto`` as it is."""
    import onnx

    from ecgtrace.models.onnx_backend import load_onnx_file

    folded = onnx.ModelProto()
    folded.CopyFrom(proto)
    if not fold_upsampled_tail(folded.graph):
        return proto
    x = torch.from_numpy(strips)
    logits = []
    for name, graph in (("unfolded.onnx", proto), ("folded.onnx", folded)):
        onnx.save(graph, str(tmp / name))
        try:
            logits.append(next(iter(load_onnx_file(tmp / name).model(x).values())).numpy())
        except Exception:  # noqa: BLE001  (the folded graph failing to run, e.g. a Resize that is not 2x here)
            if graph is proto:
                raise
            return proto
    same = logits[0].shape == logits[1].shape and float(np.abs(logits[0] - logits[1]).max()) <= FOLD_TOLERANCE
    return folded if same else proto


@contextlib.contextmanager
def _quiet_quantizer():
    """onnxruntime's quantizer logs a warning with a protobuf dump for every shape tensor it leaves alone (int64
    sizes, not activations): hundreds of lines that say nothing to the user."""
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def quantize_stage2(weights: str | Path, out: str | Path, calibration_pages: int = 24, check_pages: int = 6,
                    name: str | None = None, max_mean_shift_px: float | None = None) -> Int8Export:
    """Write the int8 ONNX form of stage-2 torch weights (``.pth`` / ``.safetensors``) to ``out``; see the module doc.

    ``max_mean_shift_px``: the check's bound (default :data:`MAX_MEAN_SHIFT_PX`; only an untrained network,
    whose columns have no peak to find, needs another)."""
    if max_mean_shift_px is None:
        max_mean_shift_px = MAX_MEAN_SHIFT_PX
    try:
        import onnx
        from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType
        from onnxruntime.quantization import quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as e:
        raise EcgTraceError("the int8 export needs onnx and onnxruntime: pip install 'ecgtrace[onnx]'") from e
    from ecgtrace.models.onnx_backend import INPUT_NAME, export_onnx, load_onnx_file

    src, out = Path(weights), Path(out)
    if out.suffix.lower() != ONNX_SUFFIX:
        raise EcgTraceError(f"the output {out} must end in {ONNX_SUFFIX}")
    if calibration_pages < 1 or check_pages < 1:
        raise EcgTraceError(f"calibration and check pages must be 1 or more, got {calibration_pages} and {check_pages}")
    loaded = load_model(src, "cpu")
    if loaded.cfg.stage != 2:
        raise EcgTraceError(f"{src} holds stage-{loaded.cfg.stage} weights; the int8 export calibrates on row strips "
                            "and is for stage-2 networks only")
    net = loaded.model
    page_size = tuple(int(v) for v in loaded.cfg.input_size)
    calib = calibration_strips(calibration_pages, CALIBRATION_SEED, page_size)
    check = calibration_strips(check_pages, CHECK_SEED, page_size, mirrored=False)

    class Strips(CalibrationDataReader):
        def __init__(self) -> None:
            self.i = 0

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self.i >= len(calib):
                return None
            self.i += 2
            return {INPUT_NAME: calib[self.i - 2:self.i]}

    with tempfile.TemporaryDirectory(prefix="ecgtrace-int8-") as tmp:
        fp32 = export_onnx(src, Path(tmp) / "fp32.onnx", name=name)
        pre = Path(tmp) / "pre.onnx"
        with _quiet_quantizer():
            quant_pre_process(str(fp32.path), str(pre))
        keep = float_nodes(onnx.load(str(pre)), len(net.decoder), float(net.final_stride))
        calibration = (f"MinMax over {len(calib)} row strips (half mirrored) of {calibration_pages} renders of "
                       f"every variant, seed {CALIBRATION_SEED}; weights int8 per channel, activations uint8")
        with atomic_write(out) as q:
            with _quiet_quantizer():
                quantize_static(str(pre), str(q), Strips(), quant_format=QuantFormat.QOperator,
                                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                                nodes_to_exclude=keep, calibrate_method=CalibrationMethod.MinMax)
            proto = onnx.load(str(q))
            drop_shape_only_dequantize(proto.graph)
            unfolded = proto
            proto = _folded_if_same(proto, check[:2], Path(tmp))
            meta = {p.key: p.value for p in onnx.load(str(fp32.path)).metadata_props}
            meta.update({"name": str(name or f"{fp32.name.removesuffix('-onnx')}-int8"), "precision": "int8",
                         "calibration": calibration, "float_nodes": json.dumps(keep),
                         "folded_tail": json.dumps(proto is not unfolded)})
            del proto.metadata_props[:]
            for k, v in meta.items():
                proto.metadata_props.add(key=k, value=v)
            onnx.save(proto, str(q))
            want, got = load_onnx_file(fp32.path).model, load_onnx_file(q).model
            ref, lg = [], []
            for i in range(0, len(check), 2):
                x = check[i:i + 2]
                ref.append(next(iter(want(torch.from_numpy(x)).values()))[:, 0].numpy())
                lg.append(next(iter(got(torch.from_numpy(x)).values()))[:, 0].numpy())
            ref_a, lg_a = np.concatenate(ref), np.concatenate(lg)
            shift = np.abs(decoded_rows(lg_a) - decoded_rows(ref_a))
            if not np.all(np.isfinite(lg_a)) or not float(shift.mean()) <= max_mean_shift_px:
                raise EcgTraceError(f"the int8 network of {src} reads the check strips {float(shift.mean()):.3f} px "
                                    f"from float32 on average (over {max_mean_shift_px}); keep the float weights")
    return Int8Export(path=out, name=meta["name"], size_bytes=out.stat().st_size, calibration=calibration,
                      float_nodes=keep, mean_shift_px=float(shift.mean()), share_over_1px=float(np.mean(shift > 1.0)),
                      max_logit_diff=float(np.abs(lg_a - ref_a).max()), folded_tail=meta["folded_tail"] == "true")

