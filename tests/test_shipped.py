"""Shipped weights: export to fp16 safetensors, the manifest, where each stage's weights come from,
fallback to the classical path on a damaged shipped file, the `models` / `export` / `check --test`
commands, and fine-tuning from an exported or shipped file (MODEL.INIT).

Every test points the shipped folder at its own tmp_path (``ECGTRACE_WEIGHTS_DIR``) with tiny
seeded models; the real ``src/ecgtrace/weights`` is only read by the tests at the end, which are
skipped while nothing ships.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from loguru import logger

from ecgtrace.cli import main
from ecgtrace.errors import EcgTraceError
from ecgtrace.models import shipped
from ecgtrace.models.checkpoint import describe_weights, load_model, read_inference_file
from ecgtrace.models.stage0 import stage0_unet
from ecgtrace.models.stage2 import stage2_unet
from ecgtrace.pipeline import Pipeline, weights_title
from ecgtrace.stages.stage2 import Stage2
from ecgtrace.train.checkpoint import save_checkpoint

torch.set_num_threads(1)
REAL_WEIGHTS = Path(shipped.__file__).resolve().parents[1] / "weights"
PAGE_HW = (425, 550)  # the tiny stage-2 model reads a quarter-size page


def _save(model: torch.nn.Module, stage: int, path: Path, input_size=PAGE_HW, epoch: int = 3) -> Path:
    """A checkpoint in the engine's format (weights, arch, pretrained_cfg, a little training state)."""
    save_checkpoint({"model_state_dict": model.state_dict(), "arch": model.arch, "stage": stage, "epoch": epoch,
                     "loss": 0.5, "optimizer_state_dict": {}, "config": {"MODEL": {"INPUT_SIZE": list(input_size)}},
                     "pretrained_cfg": describe_weights(model, stage, input_size).to_dict()}, path)
    return path


def _randomize_bn(model: torch.nn.Module, seed: int) -> None:
    """Non-trivial BatchNorm statistics, so the export is tested on more than the init values."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)


def tiny_checkpoints(d: Path, stages: tuple[int, ...] = (0, 2)) -> dict[int, Path]:
    """Tiny seeded checkpoints (~0.1 M parameters each) of ``stages``, written into ``d``."""
    from ecgtrace.models.stage1 import stage1_unet

    torch.manual_seed(0)
    m2 = stage2_unet(encoder_name="test_efficientnet", decoder_channels=[16, 8, 8, 8, 8])
    _randomize_bn(m2, 1)
    m0 = stage0_unet(encoder_name="test_efficientnet", decoder_channels=[8, 8])
    out = {2: _save(m2, 2, d / "stage2_best.pth"), 0: _save(m0, 0, d / "stage0_best.pth", (340, 440))}
    if 1 in stages:
        m1 = stage1_unet(encoder_name="test_efficientnet", decoder_channels=[8, 8, 8, 8, 8])
        out[1] = _save(m1, 1, d / "stage1_best.pth", (256, 320))
    return {k: v for k, v in out.items() if k in stages}


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    """Tiny seeded stage-2 and stage-0 checkpoints."""
    made = tiny_checkpoints(tmp_path_factory.mktemp("ckpts"))
    return {"stage2": made[2], "stage0": made[0]}


@pytest.fixture
def wdir(tmp_path, monkeypatch) -> Path:
    """An empty shipped-weights folder of this test's own."""
    d = tmp_path / "weights"
    d.mkdir()
    (d / "manifest.json").write_text(json.dumps({"format": 1, "weights": {}}))
    monkeypatch.setenv(shipped.WEIGHTS_DIR_ENV, str(d))
    return d


@pytest.fixture
def warnings():
    lines: list[str] = []
    sid = logger.add(lambda m: lines.append(str(m).rstrip("\n")), level="WARNING", format="{message}")
    yield lines
    logger.remove(sid)


# --------------------------------------------------------------------------- export
def test_export_is_fp16_self_describing_and_reads_like_the_checkpoint(ckpts, tmp_path):
    out = tmp_path / "tiny.safetensors"
    res = shipped.export_weights(ckpts["stage2"], out, name="tiny-s2")
    assert res.sha256 == shipped.file_sha256(out) and res.size_bytes == out.stat().st_size
    assert res.stage == 2 and res.parameters == sum(p.numel() for p in load_model(ckpts["stage2"]).model.parameters())
    from safetensors import safe_open

    with safe_open(str(out), framework="pt") as f:
        meta = f.metadata()
        dtypes = {f.get_tensor(k).dtype for k in f.keys() if f.get_tensor(k).is_floating_point()}
    assert dtypes == {torch.float16}  # inference only: fp16, no optimizer state
    assert json.loads(meta["pretrained_cfg"])["input_size"] == list(PAGE_HW) and meta["name"] == "tiny-s2"
    assert read_inference_file(out)["model_state_dict"]["encoder.conv_stem.weight"].dtype == torch.float32

    a, b = load_model(ckpts["stage2"], stage=2), load_model(out, stage=2, heads=("trace",))
    assert b.cfg == a.cfg and b.epoch == 3
    x = torch.randn(2, 3, 120, 256, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ya, yb = a.model(x)["trace"], b.model(x)["trace"]
    assert float((ya - yb).abs().max()) <= 2e-3 * float(ya.abs().max()) + 1e-3  # fp16 rounding only
    # the stage reads with it like with the .pth
    page = np.full((*PAGE_HW, 3), 255, np.uint8)
    sa, sb = Stage2(checkpoint=ckpts["stage2"])(page, 250.0), Stage2(checkpoint=out)(page, 250.0)
    assert sb.method == "model+classical" and set(sa.signals) == set(sb.signals)


def test_export_errors_are_one_line(ckpts, tmp_path, capsys):
    junk = tmp_path / "notes.pth"
    junk.write_text("not a checkpoint")
    cut = tmp_path / "cut.pth"
    cut.write_bytes(ckpts["stage2"].read_bytes()[:5000])
    cut_st = tmp_path / "cut.safetensors"
    shipped.export_weights(ckpts["stage2"], tmp_path / "whole.safetensors")
    cut_st.write_bytes((tmp_path / "whole.safetensors").read_bytes()[:3000])
    for src, word in ((tmp_path / "missing.pth", "not found"), (junk, "not a torch checkpoint"),
                      (cut, "truncated"), (cut_st, "truncated")):
        rc = main(["export", str(src), "--out", str(tmp_path / "o.safetensors")])
        err = capsys.readouterr().err
        assert rc == 2 and word in err and len(err.strip().splitlines()) == 1, (src, err)
    assert main(["export", str(ckpts["stage2"]), "--out", str(tmp_path / "o.bin")]) == 2
    assert main(["export", str(ckpts["stage2"]), "--out", str(tmp_path / "o.safetensors"), "--recipe", "x"]) == 2
    assert not (tmp_path / "o.safetensors").exists()


# --------------------------------------------------------------------------- ship + defaults
def test_ship_writes_the_file_and_its_manifest_entry(ckpts, wdir, tmp_path, capsys):
    figs = tmp_path / "figs.json"
    figs.write_text(json.dumps({"transfer_db": {"clean": 12.5}, "own_db": 14.1, "s_per_picture": 0.9}))
    rc = main(["export", str(ckpts["stage2"]), "--ship", "--name", "tiny-s2", "--recipe", "synthetic, all variants",
               "--figures", str(figs), "--commit", "abc123"])
    out = capsys.readouterr().out
    assert rc == 0, out
    man = json.loads((wdir / "manifest.json").read_text())
    e = man["weights"]["2"]
    assert man["format"] == 1 and e["file"] == "stage2.safetensors" and e["name"] == "tiny-s2"
    assert e["sha256"] == shipped.file_sha256(wdir / "stage2.safetensors") and e["sha256"] in out
    assert e["size_bytes"] == (wdir / "stage2.safetensors").stat().st_size and e["parameters"] > 1000
    assert e["pretrained_cfg"]["stage"] == 2 and e["pretrained_cfg"]["input_size"] == list(PAGE_HW)
    assert e["trained"]["data"] == "synthetic, all variants" and e["trained"]["commit"] == "abc123"
    assert e["trained"]["command"].startswith("ecgtrace train --stage 2")
    assert e["figures"]["own_db"] == 14.1
    assert main(["check", "--test", str(wdir / "stage2.safetensors")]) == 0
    text = capsys.readouterr().out
    assert "sha256 matches the manifest" in text and "OK: stage2.safetensors is a valid stage 2" in text

    assert main(["models"]) == 0
    text = capsys.readouterr().out
    assert "tiny-s2" in text and e["sha256"][:8] in text and "own_db 14.1" in text and "ok" in text
    assert re.search(r"stage 2: shipped tiny-s2 \(" + e["sha256"][:8], text)
    assert re.search(r"stage 0: classical", text)
    assert main(["models", "--classical"]) == 0
    assert "stage 2: classical" in capsys.readouterr().out


def test_models_says_when_nothing_ships(wdir, capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "No weights ship" in out and "classical" in out


def test_pipeline_takes_checkpoint_then_shipped_then_classical(ckpts, wdir, tmp_path):
    shipped.ship_weights(ckpts["stage2"], name="tiny-s2")
    shipped.ship_weights(ckpts["stage0"], name="tiny-s0")
    pipe = Pipeline()
    kinds = {k: w.kind for k, w in pipe.weights.items()}
    assert kinds == {"stage0": "shipped", "stage1": "classical", "stage2": "shipped"}
    assert pipe.stage2.method == "model+classical" and pipe.stage0.net is not None
    assert pipe.weights["stage2"].sha256 == shipped.file_sha256(wdir / "stage2.safetensors")
    # a checkpoint folder wins for the stages it holds, and only those
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "stage2_best.pth").write_bytes(ckpts["stage2"].read_bytes())
    pipe = Pipeline(mine)
    assert {k: w.kind for k, w in pipe.weights.items()} == {"stage0": "shipped", "stage1": "classical",
                                                            "stage2": "checkpoint"}
    assert pipe.weights["stage2"].name == "stage2_best.pth"
    # classical=True: no network anywhere
    pipe = Pipeline(classical=True)
    assert all(w.kind == "classical" for w in pipe.weights.values())
    assert pipe.stage0.net is None and pipe.stage2.model is None


def test_report_and_overlay_title_name_the_weights(ckpts, wdir, tmp_path):
    from ecgtrace.data.render import RenderStyle, render_page
    from ecgtrace.data.signals import synthesize_ecg
    from ecgtrace.paper import CANONICAL

    entry = shipped.ship_weights(ckpts["stage2"], name="tiny-s2")
    fs = 250.0
    img, _ = render_page(synthesize_ecg(np.random.default_rng(5), fs=fs), fs, page=CANONICAL.scaled_to(1100),
                         style=RenderStyle(), rng=np.random.default_rng(0))
    res = Pipeline()(img, fs=fs)
    w = res.report["weights"]
    assert w["stage2"] == {"kind": "shipped", "name": "tiny-s2", "sha256": entry.sha256[:8],
                           "path": str(entry.path), "backend": "torch"}
    assert w["stage0"]["kind"] == "classical" and res.report["method"]["stage2"] == "model+classical"
    assert res.report["stage2_precision"] in ("fp32", "bf16")
    assert Pipeline(classical=True)(img, fs=fs).report["stage2_precision"] is None  # no network ran
    json.dumps(res.report)
    title = weights_title(w)
    assert title == f"s0 classical | s1 classical | s2 shipped tiny-s2 ({entry.sha256[:8]})"
    ov = res.overlay(tmp_path / "ov.png")
    assert ov.shape == img.shape


# --------------------------------------------------------------------------- damaged shipped files
def _corrupt(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2: len(raw) // 2 + 64] = b"\x00" * 64  # same size, other bytes
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("damage", ["corrupt", "missing", "truncated", "unloadable"])
def test_damaged_shipped_file_warns_once_and_falls_back(ckpts, wdir, warnings, damage):
    entry = shipped.ship_weights(ckpts["stage2"], name="tiny-s2")
    f = entry.path
    if damage == "corrupt":
        _corrupt(f)
    elif damage == "missing":
        f.unlink()
    elif damage == "truncated":
        f.write_bytes(f.read_bytes()[:4000])
    else:  # garbage that the manifest vouches for: only loading it finds out
        f.write_bytes(b"garbage" * 100)
        man = json.loads((wdir / "manifest.json").read_text())
        man["weights"]["2"].update(sha256=shipped.file_sha256(f), size_bytes=f.stat().st_size)
        (wdir / "manifest.json").write_text(json.dumps(man))
    pipe = Pipeline()
    assert pipe.weights["stage2"].kind == "classical" and pipe.stage2.model is None
    assert "shipped weights unusable" in pipe.weights["stage2"].note
    Pipeline()  # built again: the same problem is not repeated
    assert len(warnings) == 1, warnings
    line = warnings[0]
    assert "\n" not in line and "stage2.safetensors" in line and "classical path" in line and "reinstall" in line
    leads = pipe.stage2(np.full((*PAGE_HW, 3), 255, np.uint8), 250.0)  # the classical reader still reads
    assert leads.method == "classical"


def test_unreadable_manifest_warns_and_reads_as_empty(wdir, warnings):
    (wdir / "manifest.json").write_text("{ not json")
    assert shipped.read_manifest().weights == {}
    assert all(w.kind == "classical" for w in Pipeline().weights.values())
    assert len(warnings) == 1 and "manifest.json" in warnings[0]


def test_a_users_damaged_file_stays_an_error(ckpts, wdir, tmp_path, capsys):
    shipped.export_weights(ckpts["stage2"], tmp_path / "d" / "stage2_best.safetensors")
    bad = tmp_path / "d" / "stage2_best.safetensors"
    bad.write_bytes(bad.read_bytes()[:3000])
    with pytest.raises(EcgTraceError, match="truncated"):
        Stage2(checkpoint=bad)
    page = tmp_path / "p.png"
    import cv2

    cv2.imwrite(str(page), np.full((*PAGE_HW, 3), 255, np.uint8))
    rc = main(["digitize", str(page), "--output", str(tmp_path / "o"), "--checkpoints", str(tmp_path / "d")])
    err = capsys.readouterr().err
    assert rc == 2 and "stage2_best.safetensors" in err and len(err.strip().splitlines()) == 1, err
    with pytest.raises(SystemExit):  # argparse: the two exclude each other
        main(["digitize", str(page), "--output", str(tmp_path / "o"), "--checkpoints", "x", "--classical"])


def test_check_test_reads_safetensors(ckpts, tmp_path, capsys):
    good = tmp_path / "s2.safetensors"
    shipped.export_weights(ckpts["stage2"], good)
    assert main(["check", "--test", str(good)]) == 0
    out = capsys.readouterr().out
    assert "Inference file (safetensors)" in out and "Forward pass" in out and "parameters, all match" in out
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(good.read_bytes()[:2000])
    assert main(["check", "--test", str(bad)]) == 1
    assert "truncated" in capsys.readouterr().out
    assert main(["check", "--test", str(ckpts["stage2"])]) == 0  # the .pth kind still works
    capsys.readouterr()


# --------------------------------------------------------------------------- fine-tuning starts
def test_model_init_from_safetensors_and_from_shipped(tmp_path, wdir):
    from test_engine import TinyTask, tiny_cfg

    from ecgtrace.train import checkpoint as ck
    from ecgtrace.train.engine import fit
    from ecgtrace.models.unet import UNet

    lines: list[str] = []
    sid = logger.add(lambda m: lines.append(str(m).rstrip("\n")), level="INFO", format="{message}")
    try:
        first = fit(tiny_cfg(tmp_path / "a", epochs=3), task=TinyTask())
        best = Path(ck.checkpoint_dir(str(tmp_path / "a"), 0)) / "stage0_best.pth"
        st = tmp_path / "tiny.safetensors"
        shipped.export_weights(best, st)
        with pytest.raises(EcgTraceError, match="no weights ship for stage 0"):
            fit(tiny_cfg(tmp_path / "n", epochs=1, **{"MODEL.INIT": "shipped"}), task=TinyTask())
        shipped.ship_weights(best, name="tiny-s0")
        for init, root in ((str(st), "b"), ("shipped", "c")):
            lines.clear()
            fit(tiny_cfg(tmp_path / root, epochs=1, **{"MODEL.INIT": init}), task=TinyTask())
            text = "\n".join(lines)
            assert "Initialised weights from " + init in text
            start = float(re.search(r"Batch 0/4, Loss: (\d+\.\d+)", text).group(1))
            assert start < first.history[0]["loss"], (init, start, first.history)
    finally:
        logger.remove(sid)
    # another architecture shipped for the stage: a clear error, no partial load
    other = UNet("test_efficientnet", [8, 8, 8], seg_heads={"mask": 2}, cls_heads={"quad": 4})
    _save(other, 0, tmp_path / "other.pth", (32, 32))
    shipped.ship_weights(tmp_path / "other.pth", name="other")
    with pytest.raises(EcgTraceError, match="another architecture"):
        fit(tiny_cfg(tmp_path / "d", epochs=1, **{"MODEL.INIT": "shipped"}), task=TinyTask())


# --------------------------------------------------------------------------- the real shipped files
REAL = shipped.read_manifest(REAL_WEIGHTS)


@pytest.mark.skipif(not REAL.weights, reason="no weights ship yet (src/ecgtrace/weights/manifest.json is empty)")
@pytest.mark.parametrize("stage", sorted(REAL.weights))
def test_real_shipped_files_load_and_match_their_sha256(stage):
    entry = REAL.weights[stage]
    assert shipped.shipped_problem(entry) is None
    net = load_model(entry.path, stage=stage)
    assert net.cfg.to_dict() == entry.pretrained_cfg
    assert sum(p.numel() for p in net.model.parameters()) == entry.parameters
    assert shipped.folder_size(REAL_WEIGHTS) <= shipped.SIZE_BUDGET_BYTES


@pytest.mark.skipif(2 not in REAL.weights, reason="no stage-2 weights ship yet")
def test_real_shipped_stage2_reads_a_page_better_than_the_classical_path():
    from ecgtrace import paper
    from ecgtrace.data.render import RenderStyle, render_page
    from ecgtrace.data.signals import synthesize_ecg
    from ecgtrace.metric import snr_for_image
    from ecgtrace.paper import CANONICAL, csv_rows

    fs = 500.0
    signals = synthesize_ecg(np.random.default_rng(21), fs=fs)
    img, _ = render_page(signals, fs, page=CANONICAL, style=RenderStyle(), rng=np.random.default_rng(2))
    n = len(signals["II"])
    truth = {lead: np.asarray(signals[lead])[slice(*csv_rows(lead, fs, n))] for lead in paper.LEADS}
    source = shipped.WeightsSource.from_entry(REAL.weights[2])
    model = Stage2(checkpoint=source)
    assert model.weights.kind == "shipped"
    db_model = snr_for_image(truth, model(img, fs).signals, fs).db
    db_classical = snr_for_image(truth, Stage2()(img, fs).signals, fs).db
    assert db_model >= db_classical, (db_model, db_classical)
