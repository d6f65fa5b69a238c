"""Checkpoint files and `ecgtrace check`: keys, atomic writes, and clear diagnoses of bad files."""

from __future__ import annotations

import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from ecgtrace.cli import main as cli_main
from ecgtrace.errors import EcgTraceError
from ecgtrace.train import checkpoint as ck
from ecgtrace.train.engine import fit
from test_engine import TinyTask, tiny_cfg

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A real checkpoint folder from a 2-epoch tiny run."""
    root = tmp_path_factory.mktemp("ck")
    fit(tiny_cfg(root, epochs=2), task=TinyTask())
    return root


def _check(args: list[str], capsys) -> tuple[int, str]:
    rc = cli_main(["check", *args])
    out = capsys.readouterr()
    return rc, out.out + out.err


def test_good_checkpoint_passes_check(trained, capsys):
    p = Path(ck.checkpoint_dir(str(trained), 0)) / "stage0_best.pth"
    rc, out = _check(["--test", str(p)], capsys)
    assert rc == 0, out
    assert re.search(r"^OK: stage0_best\.pth is a valid stage 0 checkpoint \(epoch \d, loss \d+\.\d{4}\)$", out, re.M)
    assert "Forward pass on 1x3x" in out and "all match" in out


def test_truncated_checkpoint_is_diagnosed(trained, tmp_path, capsys):
    good = Path(ck.checkpoint_dir(str(trained), 0)) / "stage0_epoch_1.pth"
    bad = tmp_path / "stage0_epoch_1.pth"
    data = good.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    rc, out = _check(["--test", str(bad)], capsys)
    assert rc == 1
    last = out.strip().splitlines()[-1]
    assert last.startswith("PROBLEM: ") and "truncated or corrupt" in last, out
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    rc, out = _check(["--test", str(empty)], capsys)
    assert rc == 1 and "is empty (0 bytes)" in out
    text = tmp_path / "notes.pth"
    text.write_text("these are not weights\n")
    rc, out = _check(["--test", str(text)], capsys)
    assert rc == 1 and "PROBLEM:" in out and ("not a torch checkpoint" in out or "corrupt" in out)


def test_mismatched_checkpoint_is_diagnosed(trained, tmp_path, capsys):
    state = ck.load_checkpoint(Path(ck.checkpoint_dir(str(trained), 0)) / "stage0_final.pth")
    # the weights of one architecture filed under another (wider decoder), in both of its records
    wider = dict(state["arch"]["kwargs"], decoder_channels=[32, 16, 8])
    state["arch"] = {"name": "unet", "kwargs": wider}
    state["pretrained_cfg"] = dict(state["pretrained_cfg"], arch_kwargs=wider)
    p = tmp_path / "mixed.pth"
    ck.save_checkpoint(state, p)
    rc, out = _check(["--test", str(p)], capsys)
    assert rc == 1
    last = out.strip().splitlines()[-1]
    assert last.startswith("PROBLEM: architecture mismatch:") and "differ in shape" in last, out
    # missing guide key
    del state["optimizer_state_dict"]
    state["arch"] = ck.load_checkpoint(p)["arch"]
    ck.save_checkpoint(state, p)
    rc, out = _check(["--test", str(p)], capsys)
    assert rc == 1 and "lacks required key(s) optimizer_state_dict" in out
    # a bare state dict is not a training checkpoint
    torch.save({"w": torch.zeros(2)}, tmp_path / "bare.pth")
    rc, out = _check(["--test", str(tmp_path / "bare.pth")], capsys)
    assert rc == 1 and "bare state dict" in out


def test_nan_weights_are_diagnosed(trained, tmp_path, capsys):
    state = ck.load_checkpoint(Path(ck.checkpoint_dir(str(trained), 0)) / "stage0_final.pth")
    k = next(k for k, v in state["model_state_dict"].items() if v.is_floating_point() and v.numel() > 1)
    state["model_state_dict"][k] = state["model_state_dict"][k] * float("nan")
    ck.save_checkpoint(state, tmp_path / "nan.pth")
    rc, out = _check(["--test", str(tmp_path / "nan.pth")], capsys)
    assert rc == 1 and "NaN/inf" in out


def test_status_and_list(trained, capsys):
    rc, out = _check(["--output-root", str(trained)], capsys)
    assert rc == 0
    assert re.search(r"Stage 0: 4 checkpoint\(s\) in .*; last epoch 2; best loss \d+\.\d{4}; final model yes", out)
    assert "Stage 1: no checkpoints" in out
    rc, out = _check(["--list", "--output-root", str(trained)], capsys)
    assert rc == 0
    for name in ("stage0_epoch_1.pth", "stage0_epoch_2.pth", "stage0_best.pth", "stage0_final.pth"):
        assert re.search(re.escape(name) + r"\s+\d\s+\d+\.\d{4}\s+[\d.]+MB\s+\d{4}-\d\d-\d\d", out), (name, out)


def test_atomic_save_and_safe_load(tmp_path, monkeypatch):
    p = tmp_path / "x.pth"
    ck.save_checkpoint({"epoch": 1, "model_state_dict": {"w": torch.ones(3)}}, p)
    assert torch.load(p, weights_only=True)["epoch"] == 1
    # a crash during the write leaves the old file intact and no temp file behind
    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(RuntimeError):
        ck.save_checkpoint({"epoch": 2, "model_state_dict": {}}, p)
    monkeypatch.undo()
    assert torch.load(p, weights_only=True)["epoch"] == 1
    assert [q.name for q in tmp_path.iterdir()] == ["x.pth"]
    with pytest.raises(EcgTraceError, match="not found"):
        ck.load_checkpoint(tmp_path / "nope.pth")


def test_rng_state_round_trip():
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    state = ck.get_rng_state()
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    ck.set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a


def test_checkpoint_describes_its_weights_and_loads_without_a_training_config(trained, tmp_path):
    """A checkpoint written now carries pretrained_cfg (architecture, input size, normalisation, heads): it loads
    with its config removed; one written before pretrained_cfg existed gets the same description derived."""
    from ecgtrace.models import checkpoint as mck

    final = Path(ck.checkpoint_dir(str(trained), 0)) / "stage0_final.pth"
    state = mck.load_checkpoint(final)
    desc = state[mck.PRETRAINED_CFG_KEY]
    assert desc["input_size"] == list(state["config"]["MODEL"]["INPUT_SIZE"])
    assert desc["architecture"] == state["arch"]["name"] and desc["arch_kwargs"] == state["arch"]["kwargs"]
    assert desc["mean"] == pytest.approx([0.485, 0.456, 0.406]) and desc["channel_order"] == "RGB"
    assert desc["heads"] and set(desc["heads"]) <= set(state["arch"]["kwargs"]["seg_heads"]) | set(
        state["arch"]["kwargs"]["cls_heads"])

    no_config = tmp_path / "no_config.pth"
    ck.save_checkpoint({k: v for k, v in state.items() if k != "config"}, no_config)
    old = tmp_path / "before_pretrained_cfg.pth"
    ck.save_checkpoint({k: v for k, v in state.items() if k != mck.PRETRAINED_CFG_KEY}, old)
    assert mck.pretrained_cfg_of(mck.load_checkpoint(old)) == mck.PretrainedCfg.from_dict(desc)

    h, w = desc["input_size"]
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((1, 3, h, w)).astype(np.float32))
    outs = []
    for p in (final, no_config, old):
        net = mck.load_model(p)
        assert net.cfg.input_size == (h, w)
        with torch.no_grad():
            outs.append({k: v.numpy() for k, v in net.model(x).items()})
    for o in outs[1:]:
        assert all(np.array_equal(o[k], outs[0][k]) for k in outs[0])
