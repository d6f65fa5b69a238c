"""The int8 stage-2 network: made from float weights (calibrated on our renders, checked against float32), shipped
beside them, chosen by the precision (``auto`` runs it on a CPU with VNNI), the float weights when it is damaged,
one-line errors where int8 is asked for and cannot run. Tiny seeded models; every shipped folder is the test's own,
except the last test, which reads the real shipped files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ecgtrace.cli import main
from ecgtrace.errors import EcgTraceError
from ecgtrace.models import shipped
from ecgtrace.models import stage2 as model2
from ecgtrace.models.checkpoint import load_model
from ecgtrace.pipeline import Pipeline
from ecgtrace.stages.stage2 import Stage2
from test_shipped import REAL, PAGE_HW, _corrupt, tiny_checkpoints, warnings, wdir  # noqa: F401 (fixtures)

onnx = pytest.importorskip("onnx")
from ecgtrace.train import graph_passes, quantize  # noqa: E402  (needs onnx only to run)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    return tiny_checkpoints(tmp_path_factory.mktemp("ckpts"), stages=(0, 2))


@pytest.fixture(scope="module")
def int8_file(ckpts, tmp_path_factory):
    """The tiny stage-2 network in int8 (one calibration render, one check render). Untrained, its columns have no
    peak, so the decoded positions say nothing and the check's bound is lifted; the logits are compared instead."""
    out = tmp_path_factory.mktemp("int8") / "stage2_tiny-int8.onnx"
    return quantize.quantize_stage2(ckpts[2], out, calibration_pages=1, check_pages=1, max_mean_shift_px=np.inf)


@pytest.fixture
def vnni(monkeypatch):
    """A CPU with 8-bit dot products, whatever this one has: ``auto`` then picks int8."""
    monkeypatch.setattr(model2, "cpu_has_int8_dot", lambda: True)
    monkeypatch.delenv("ECGTRACE_PRECISION", raising=False)


def _page() -> np.ndarray:
    from ecgtrace.data.render import RenderStyle, render_page
    from ecgtrace.data.signals import synthesize_ecg
    from ecgtrace.paper import CANONICAL

    img, _ = render_page(synthesize_ecg(np.random.default_rng(5), fs=250.0), 250.0,
                         page=CANONICAL.scaled_to(PAGE_HW[1]), style=RenderStyle(), rng=np.random.default_rng(0))
    return img


def test_int8_export_is_int8_self_describing_and_reads_like_float32(ckpts, int8_file):
    res = int8_file
    assert res.path.is_file() and res.size_bytes == res.path.stat().st_size
    graph = onnx.load(str(res.path))
    ops = [n.op_type for n in graph.graph.node]
    assert ops.count("QLinearConv") >= 10  # the encoder and the coarse decoder really are int8 ...
    floats = [n.name for n in graph.graph.node if n.op_type == "Conv"]
    assert sorted(floats) == sorted(res.float_nodes) and any("/decoder.4/" in n for n in floats)  # ... the fine end not
    assert any(n.name.startswith("/decoder.3/conv2/") for n in graph.graph.node if n.op_type == "Conv")
    # the stride-2 block's first convolution reads its wide int8 input as int8
    assert not any(n.startswith("/decoder.3/conv1/") for n in floats)
    assert any(n.name.startswith("/decoder.3/conv1/") for n in graph.graph.node if n.op_type == "QLinearConv")
    meta = {p.key: p.value for p in graph.metadata_props}
    assert meta["precision"] == "int8" and "renders of every variant" in meta["calibration"]
    net_f, net_q = load_model(ckpts[2]), load_model(res.path, stage=2)
    assert net_q.cfg == net_f.cfg and net_q.model.precision == "int8"
    assert np.isfinite(res.mean_shift_px) and 0.0 <= res.share_over_1px <= 1.0
    # strips of renders neither calibration nor check saw, through float32 torch and int8: the same logits up to
    # int8 rounding (measured: 15 % of their spread, correlation 0.985; this untrained network's spread is small)
    x = torch.from_numpy(quantize.calibration_strips(1, 99, PAGE_HW)[:4])
    with torch.no_grad():
        lf = net_f.model.eval()(x)["trace"]
    lq = net_q.model(x)["trace"]
    assert lq.shape == lf.shape and float((lq - lf).std()) < 0.3 * float(lf.std())
    assert float(np.corrcoef(lq.flatten(), lf.flatten())[0, 1]) > 0.95
    stage_q = Stage2(checkpoint=res.path)
    assert stage_q.model.precision == "int8" and stage_q.weights.backend == "onnx"
    assert stage_q(_page(), 250.0).method == "model+classical"
    # named stage2_*.onnx, --checkpoints on its folder runs it
    assert Pipeline(res.path.parent).stage2.model.precision == "int8"


def _shape_only_dequantize(graph) -> list[str]:
    users: dict[str, list[str]] = {}
    for n in graph.node:
        for name in n.input:
            users.setdefault(name, []).append(n.op_type)
    return [n.name for n in graph.node
            if n.op_type == "DequantizeLinear" and set(users.get(n.output[0], [])) == {"Shape"}]


def _with_shape_dequantize(graph) -> int:
    """Put back what the export removed: each Shape of an int8 activation reads a float32 copy of it, as
    onnxruntime's quantizer writes the graph. Returns how many copies were added."""
    made = {n.output[0] for n in graph.node if n.op_type in ("QLinearConv", "QLinearAdd", "QLinearConcat")}
    added = 0
    for n in list(graph.node):
        if n.op_type == "Shape" and n.input[0] in made:
            q = n.input[0]
            graph.node.insert(list(graph.node).index(n), onnx.helper.make_node(
                "DequantizeLinear", [q, q.replace("_quantized", "_scale"), q.replace("_quantized", "_zero_point")],
                [q + "_float"]))
            n.input[0] = q + "_float"
            added += 1
    return added


def test_no_tensor_is_turned_back_to_float32_only_for_its_size(int8_file, tmp_path):
    """The U-Net's decoder reads each skip's shape; in the exported file the Shape reads the int8 tensor. With the
    quantizer's float32 copies for it put back, the outputs are the same numbers, and the export's pass removes
    them again."""
    import onnxruntime as ort

    exported = onnx.load(str(int8_file.path))
    assert _shape_only_dequantize(exported.graph) == []
    with_copies = onnx.load(str(int8_file.path))
    added = _with_shape_dequantize(with_copies.graph)
    assert added >= 4 and len(_shape_only_dequantize(with_copies.graph)) == added
    onnx.save(with_copies, str(tmp_path / "with.onnx"))
    x = quantize.calibration_strips(1, 77, PAGE_HW)[:2]
    outs = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"image": x})
            for p in (int8_file.path, tmp_path / "with.onnx")]
    assert all(np.array_equal(a, b) for a, b in zip(*outs))
    assert graph_passes.drop_shape_only_dequantize(with_copies.graph) == added
    assert _shape_only_dequantize(with_copies.graph) == []


def test_phase_kernels_compute_the_upsampled_convolutions():
    """The coarse-grid kernels of graph_passes against torch on the fine grid: a 3 x 3 convolution after a nearest 2x
    upsampling, then one between fine tensors, laid out as phases and shuffled back (pixel_shuffle is CRD)."""
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 5, 7, 9, generator=g, dtype=torch.float64)
    w1, w2 = torch.randn(4, 5, 3, 3, generator=g, dtype=torch.float64), torch.randn(3, 4, 3, 3, generator=g,
                                                                                      dtype=torch.float64)
    fine = F.conv2d(F.relu(F.conv2d(F.interpolate(x, scale_factor=2, mode="nearest"), w1, padding=1)), w2, padding=1)
    p1 = torch.from_numpy(graph_passes.upsampled_conv_phases(w1.numpy()))
    p2 = torch.from_numpy(graph_passes.polyphase_conv(w2.numpy()))
    coarse = F.pixel_shuffle(F.conv2d(F.relu(F.conv2d(x, p1, padding=1)), p2, padding=1), 2)
    assert coarse.shape == fine.shape and float((coarse - fine).abs().max()) < 1e-9


def test_the_last_block_on_the_coarse_grid_computes_the_same(ckpts, int8_file, tmp_path):
    """fold_upsampled_tail on the tiny U-Net's float32 export: one DepthToSpace writes the logits, no Resize is left
    before a float32 Conv, and the logits are the unfolded graph's to float rounding. The int8 export folded its
    tail too, and says so."""
    import onnxruntime as ort

    from ecgtrace.models.onnx_backend import export_onnx

    fp32 = export_onnx(ckpts[2], tmp_path / "fp32.onnx")
    graph = onnx.load(str(fp32.path))
    assert graph_passes.fold_upsampled_tail(graph.graph) == 1
    ops = [n.op_type for n in graph.graph.node]
    assert ops.count("DepthToSpace") == 1 and ops.count("Resize") == [n.op_type for n in onnx.load(
        str(fp32.path)).graph.node].count("Resize") - 1
    assert graph_passes.fold_upsampled_tail(graph.graph) == 0  # nothing left to fold
    onnx.save(graph, str(tmp_path / "folded.onnx"))
    x = quantize.calibration_strips(1, 78, PAGE_HW)[:2]
    before, after = (ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
                     for p in (fp32.path, tmp_path / "folded.onnx"))
    assert after.shape == before.shape and float(np.abs(after - before).max()) < 1e-4 * max(1.0, np.abs(before).max())
    assert int8_file.folded_tail
    exported = onnx.load(str(int8_file.path))
    assert [n.op_type for n in exported.graph.node].count("DepthToSpace") == 1
    assert {p.key: p.value for p in exported.metadata_props}["folded_tail"] == "true"


def test_a_fold_that_changes_the_logits_is_not_taken(ckpts, tmp_path, monkeypatch):
    """The export keeps the unfolded graph when the folded one's logits differ (here: kernels deliberately off)."""
    from ecgtrace.models.onnx_backend import export_onnx

    proto = onnx.load(str(export_onnx(ckpts[2], tmp_path / "fp32.onnx").path))
    x = quantize.calibration_strips(1, 79, PAGE_HW)[:2]
    assert quantize._folded_if_same(proto, x, tmp_path) is not proto  # the true kernels: folded
    monkeypatch.setattr(graph_passes, "upsampled_conv_phases", lambda w: 1.01 * np.repeat(w, 4, axis=0))
    assert quantize._folded_if_same(proto, x, tmp_path) is proto


def test_the_check_can_refuse(ckpts, tmp_path, monkeypatch):
    out = tmp_path / "refused.onnx"
    with pytest.raises(EcgTraceError, match="keep the float weights"):  # no network reads this close
        quantize.quantize_stage2(ckpts[2], out, calibration_pages=1, check_pages=1, max_mean_shift_px=-1.0)
    assert not out.exists()


def test_ship_int8_then_auto_runs_it_and_fp32_does_not(ckpts, wdir, vnni, capsys, monkeypatch):  # noqa: F811
    entry = shipped.ship_weights(ckpts[2], name="tiny-s2")
    monkeypatch.setattr(quantize, "MAX_MEAN_SHIFT_PX", np.inf)  # untrained: see the int8_file fixture
    assert main(["export", str(entry.path), "--int8", "--ship", "--calibration-pages", "1"]) == 0
    out = capsys.readouterr().out
    assert "decoded columns" in out and "stage2-int8.onnx" in out
    man = json.loads((wdir / "manifest.json").read_text())["weights"]["2"]
    q = man["int8"]
    assert q["file"] == "stage2-int8.onnx" and q["source_sha256"] == entry.sha256
    assert q["sha256"] == shipped.file_sha256(wdir / "stage2-int8.onnx")
    assert shipped.folder_size(wdir) == entry.size_bytes + q["size_bytes"]

    pipe = Pipeline()
    w = pipe.weights["stage2"]
    assert w.kind == "shipped" and w.backend == "onnx" and w.name == q["name"] and w.sha256 == q["sha256"]
    assert pipe.stage2.model.precision == "int8" and "[onnx]" in w.label()
    assert main(["models"]) == 0
    text = capsys.readouterr().out
    assert "int8" in text and q["sha256"][:8] in text

    monkeypatch.setenv("ECGTRACE_PRECISION", "fp32")
    pipe = Pipeline()
    assert pipe.weights["stage2"].sha256 == entry.sha256 and pipe.stage2.model.precision == "fp32"
    monkeypatch.setenv("ECGTRACE_PRECISION", "auto")
    monkeypatch.setattr(model2, "cpu_has_int8_dot", lambda: False)  # AVX2 alone: auto keeps the float weights
    assert Pipeline().weights["stage2"].sha256 == entry.sha256
    monkeypatch.setenv("ECGTRACE_PRECISION", "int8")  # asked for: it runs
    pipe = Pipeline()
    assert pipe.stage2.model.precision == "int8"
    assert Stage2(checkpoint=pipe.stage2.weights).weights == pipe.stage2.weights  # the int8 source given again

    # shipping new float weights drops the int8 form of the old ones
    shipped.ship_weights(ckpts[2], name="tiny-s2-again")
    assert not (wdir / "stage2-int8.onnx").exists()
    assert "int8" not in json.loads((wdir / "manifest.json").read_text())["weights"]["2"]
    with pytest.raises(EcgTraceError, match="no int8 network ships"):
        Pipeline()


def test_damaged_int8_warns_once_and_the_float_weights_run(ckpts, wdir, vnni, warnings):  # noqa: F811
    entry = shipped.ship_weights(ckpts[2], name="tiny-s2")
    res = quantize.quantize_stage2(entry.path, wdir / "made.onnx", calibration_pages=1, check_pages=1,
                                   max_mean_shift_px=np.inf)
    shipped.ship_int8(res.path, {"stage": 2, "name": res.name, "source_sha256": entry.sha256})
    _corrupt(wdir / "stage2-int8.onnx")
    for _ in range(2):
        pipe = Pipeline()
        assert pipe.weights["stage2"].sha256 == entry.sha256 and pipe.stage2.model.precision != "int8"
    assert len(warnings) == 1 and "stage2-int8.onnx" in warnings[0] and "float weights run" in warnings[0]
    assert pipe.stage2(np.full((*PAGE_HW, 3), 255, np.uint8), 250.0).method == "model+classical"


def test_int8_errors_are_one_line(ckpts, int8_file, wdir, monkeypatch, capsys):  # noqa: F811
    monkeypatch.setenv("ECGTRACE_PRECISION", "int8")
    with pytest.raises(EcgTraceError, match="export .* --int8") as e:
        Stage2(checkpoint=ckpts[2])  # torch weights of the user's
    assert "\n" not in str(e.value)
    assert Stage2(checkpoint=int8_file.path).model.precision == "int8"  # an int8 file of the user's is fine
    entry = shipped.ship_weights(ckpts[2], name="tiny-s2")
    with pytest.raises(EcgTraceError, match="no int8 network ships"):
        Pipeline()
    with pytest.raises(EcgTraceError, match="made from other weights"):  # int8 of other weights never ships
        shipped.ship_int8(int8_file.path, {"stage": 2, "name": "x", "source_sha256": "0" * 64})
    monkeypatch.setenv("ECGTRACE_PRECISION", "auto")
    assert main(["export", str(ckpts[0]), "--int8", "--out", str(wdir / "s0.onnx")]) == 2
    err = capsys.readouterr().err
    assert "stage-2 networks only" in err and len(err.strip().splitlines()) == 1
    assert main(["export", str(entry.path), "--int8", "--onnx", "--out", str(wdir / "x.onnx")]) == 2
    assert "without --onnx" in capsys.readouterr().err
    with pytest.raises(EcgTraceError, match="int8 runs the int8 ONNX network"):
        model2.resolve_precision("int8", "cpu", is_torch=True)


@pytest.mark.skipif(2 not in REAL.weights or not REAL.weights[2].int8, reason="no int8 stage-2 network ships")
def test_real_shipped_int8_is_intact_and_reads_like_the_float_weights(vnni):
    entry = REAL.weights[2]
    assert shipped.int8_problem(entry) is None and entry.int8["source_sha256"] == entry.sha256
    float_stage = Stage2(checkpoint=shipped.WeightsSource.from_entry(entry))
    float_stage.model.precision = "fp32"
    q_stage = Stage2(checkpoint=shipped.WeightsSource.from_entry(entry))
    assert q_stage.model.precision == "int8" and q_stage.weights.path == entry.int8_path
    from ecgtrace.paper import CANONICAL

    import cv2

    page = cv2.resize(_page(), (CANONICAL.width_px, CANONICAL.height_px))
    yf = np.stack([model2.decode_columns(lg)[0] for lg in float_stage.model.row_logits(page).logits])
    yq = np.stack([model2.decode_columns(lg)[0] for lg in q_stage.model.row_logits(page).logits])
    assert float(np.abs(yq - yf).mean()) < quantize.MAX_MEAN_SHIFT_PX
