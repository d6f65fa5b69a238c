"""The onnxruntime backend: export (checked against torch), reading ``.onnx`` files, ``backend="onnx"``
through the export cache, the reports naming the backend, and one-line errors (damaged file, wrong
input, onnxruntime missing). Tiny seeded models; the cache lives in the test's tmp_path."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from ecgtrace.cli import main
from ecgtrace.errors import EcgTraceError
from ecgtrace.models import shipped
from ecgtrace.models.checkpoint import load_model
from ecgtrace.stages.stage2 import Stage2
from test_shipped import PAGE_HW, tiny_checkpoints

ort = pytest.importorskip("onnxruntime")
from ecgtrace.models import onnx_backend  # noqa: E402  (needs onnxruntime only to run, not to import)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[int, object]:
    """Tiny seeded checkpoints of the three stages."""
    return tiny_checkpoints(tmp_path_factory.mktemp("ckpts"), stages=(0, 1, 2))


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ECGTRACE_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "onnx"


@pytest.mark.parametrize("stage", [0, 1, 2])
def test_export_agrees_with_torch_on_other_inputs_and_batch_sizes(ckpts, tmp_path, stage):
    res = onnx_backend.export_onnx(ckpts[stage], tmp_path / f"s{stage}.onnx")
    assert res.stage == stage
    net_t = load_model(ckpts[stage])
    net_o = load_model(res.path)
    assert isinstance(net_o.model, onnx_backend.OnnxNetwork)
    assert net_o.cfg == net_t.cfg and net_o.epoch == net_t.epoch
    shape = onnx_backend.input_shape(net_t.cfg)
    x = torch.randn((2,) + shape[1:], generator=torch.Generator().manual_seed(7)) * 2
    with torch.no_grad():
        want = net_t.model(x)
    got = net_o.model(x)
    assert set(got) == set(want)
    for k in want:
        ok, diff = onnx_backend.logits_agree(got[k], want[k])
        assert got[k].shape == want[k].shape and ok, (k, diff)
    # the check can fail: a logit moved by 2e-3 is outside the tolerance
    k = next(iter(want))
    moved = want[k].clone()
    moved.view(-1)[0] += 2e-3 + 1e-5 * float(moved.view(-1)[0].abs())
    assert not onnx_backend.logits_agree(moved, want[k])[0]


@pytest.mark.parametrize("size", [(7, 9), (2, 2), (5, 1), (11, 6)])
def test_exportable_adaptive_pool_is_torchs(size):
    from ecgtrace.models.unet import adaptive_avg_pool

    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1))
    for n in (1, 2, 3):
        assert torch.allclose(adaptive_avg_pool(x, n), torch.nn.functional.adaptive_avg_pool2d(x, n), atol=1e-6)


def test_stage2_reads_the_same_page_with_either_backend(ckpts, cache):
    from ecgtrace.data.render import RenderStyle, render_page
    from ecgtrace.data.signals import synthesize_ecg
    from ecgtrace.paper import CANONICAL

    fs = 250.0
    img, _ = render_page(synthesize_ecg(np.random.default_rng(5), fs=fs), fs, page=CANONICAL.scaled_to(PAGE_HW[1] * 2),
                         style=RenderStyle(), rng=np.random.default_rng(0))
    torch_read = Stage2(checkpoint=ckpts[2])(img, fs)
    onnx_stage = Stage2(checkpoint=ckpts[2], backend="onnx")
    assert onnx_stage.weights.backend == "onnx" and onnx_stage.weights.label().endswith("[onnx]")
    assert onnx_stage.weights.to_dict()["backend"] == "onnx"
    assert len(list(cache.glob("*.onnx"))) == 1  # exported once into the cache ...
    stamp = next(cache.glob("*.onnx")).stat().st_mtime_ns
    again = Stage2(checkpoint=ckpts[2], backend="onnx")
    assert next(cache.glob("*.onnx")).stat().st_mtime_ns == stamp  # ... and read from there afterwards
    onnx_read = again(img, fs)
    for lead, sig in torch_read.signals.items():
        assert np.allclose(onnx_read.signals[lead], sig, atol=1e-3, equal_nan=True), lead


def test_export_and_check_commands(ckpts, tmp_path, capsys):
    out = tmp_path / "stage2_mine.onnx"
    assert main(["export", str(ckpts[2]), "--onnx", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "max logit difference" in text and out.is_file()
    assert main(["check", "--test", str(out)]) == 0
    assert "valid stage 2 ONNX network" in capsys.readouterr().out
    # --checkpoints DIR finds the .onnx file of a stage, and it runs with onnxruntime without --backend
    src = shipped.resolve_weights(2, tmp_path)
    assert src.path == out and src.backend == "onnx"
    assert main(["export", str(ckpts[2]), "--onnx", "--out", str(tmp_path / "x.pth")]) == 2
    assert "must end in .onnx" in capsys.readouterr().err
    # digitize reads a picture with it, and its report says onnxruntime ran stage 2
    import cv2

    from ecgtrace.data.render import RenderStyle, render_page
    from ecgtrace.data.signals import synthesize_ecg
    from ecgtrace.paper import CANONICAL

    img, _ = render_page(synthesize_ecg(np.random.default_rng(3), fs=250.0), 250.0, page=CANONICAL.scaled_to(1100),
                         style=RenderStyle(), rng=np.random.default_rng(1))
    cv2.imwrite(str(tmp_path / "page.png"), img)
    assert main(["digitize", str(tmp_path / "page.png"), "--output", str(tmp_path / "out"), "--checkpoints",
                 str(tmp_path), "--no-overlay"]) == 0
    report = json.loads((tmp_path / "out" / "page.json").read_text())
    assert report["weights"]["stage2"]["backend"] == "onnx" and report["weights"]["stage2"]["name"] == out.name


def test_damaged_or_foreign_onnx_files_are_one_line(ckpts, tmp_path, capsys):
    good = onnx_backend.export_onnx(ckpts[2], tmp_path / "good.onnx").path
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(good.read_bytes()[:2000])
    with pytest.raises(EcgTraceError, match="not a readable ONNX model.*export it again") as e:
        Stage2(checkpoint=cut)
    assert "\n" not in str(e.value)
    assert main(["check", "--test", str(cut)]) == 1
    assert "not a readable ONNX model" in capsys.readouterr().out
    with pytest.raises(EcgTraceError, match="is a stage 2 checkpoint; give a stage 0"):
        onnx_backend.load_onnx_file(good, stage=0)
    net = onnx_backend.load_onnx_file(good)
    with pytest.raises(EcgTraceError, match="exported for inputs of shape"):
        net.model(torch.zeros(1, 3, 64, 64))


def test_missing_onnxruntime_is_one_line_not_a_silent_fallback(ckpts, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` raises ImportError
    with pytest.raises(EcgTraceError, match=r"pip install 'ecgtrace\[onnx\]'"):
        Stage2(checkpoint=ckpts[2], backend="onnx")
    entry_like = shipped.WeightsSource(kind="shipped", name="s2", sha256="0" * 64, path=ckpts[2], stage=2)
    with pytest.raises(EcgTraceError, match="needs onnxruntime"):  # shipped weights too: the user asked for onnx
        Stage2(checkpoint=entry_like, backend="onnx")
    assert Stage2(checkpoint=ckpts[2]).weights.backend == "torch"  # torch never needs it
    with pytest.raises(EcgTraceError, match="unknown backend"):
        Stage2(checkpoint=ckpts[2], backend="tensorrt")
