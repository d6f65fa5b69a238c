"""The shared training engine: log lines, loss going down, exact resume, NaN stop, debug mode."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from loguru import logger

from ecgtrace.config import load_config
from ecgtrace.errors import EcgTraceError
from ecgtrace.models.unet import UNet
from ecgtrace.train import checkpoint as ck
from ecgtrace.train.engine import TrainingDiverged, fit

torch.set_num_threads(1)


class SquaresDataset(torch.utils.data.Dataset):
    """A bright square on a noisy 32x32 image; targets: its mask and which quadrant it sits in.

    The noise depends on (seed, epoch, index) only, like the real stage datasets.
    """

    def __init__(self, n: int, seed: int = 0, size: int = 32) -> None:
        self.n, self.seed, self.size, self.epoch = n, seed, size, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        s = self.size
        place = np.random.default_rng((self.seed, i))  # geometry fixed per sample
        noise = np.random.default_rng((self.seed, self.epoch, i))  # appearance changes per epoch
        q = int(place.integers(0, 4))
        half = s // 2
        y0 = (q // 2) * half + int(place.integers(1, half - 9))
        x0 = (q % 2) * half + int(place.integers(1, half - 9))
        img = noise.normal(0.0, 0.2, (3, s, s)).astype(np.float32)
        mask = np.zeros((s, s), np.int64)
        mask[y0:y0 + 8, x0:x0 + 8] = 1
        img[:, mask == 1] += 1.5
        return {"image": torch.from_numpy(img), "mask": torch.from_numpy(mask), "quad": torch.tensor(q)}


class TinyTask:
    """A few-thousand-parameter stand-in for a stage task."""

    stage = 0

    def __init__(self, n_train: int = 16, n_val: int = 8, nan_at_epoch: int | None = None) -> None:
        self.n_train, self.n_val, self.nan_at_epoch = n_train, n_val, nan_at_epoch
        self.epoch = 0

    def build_model(self, cfg):
        return UNet("test_efficientnet", [16, 8, 8], seg_heads={"mask": 2}, cls_heads={"quad": 4})

    def build_datasets(self, cfg):
        outer = self

        class _Tracked(SquaresDataset):
            """Tells the task the epoch too (so the NaN test can fire in a chosen epoch)."""

            def set_epoch(self, epoch: int) -> None:
                super().set_epoch(epoch)
                outer.epoch = epoch

        return _Tracked(self.n_train, seed=1), (SquaresDataset(self.n_val, seed=2) if self.n_val else None)

    def loss(self, outputs, batch):
        seg = F.cross_entropy(outputs["mask"], batch["mask"])
        cls = F.cross_entropy(outputs["quad"], batch["quad"])
        total = seg + cls
        if self.nan_at_epoch is not None and self.epoch >= self.nan_at_epoch:
            total = total * float("nan")
        return total, {"seg": seg.item(), "cls": cls.item()}

    def metrics(self, outputs, batch):
        acc = (outputs["quad"].argmax(1) == batch["quad"]).float().mean().item()
        pred = outputs["mask"].argmax(1)
        inter = ((pred == 1) & (batch["mask"] == 1)).sum().item()
        union = ((pred == 1) | (batch["mask"] == 1)).sum().item()
        return {"quad_acc": acc, "mask_iou": inter / max(1, union)}


def tiny_cfg(root: Path, epochs: int = 3, **extra):
    over = {"OUTPUT.ROOT": str(root), "TRAIN.EPOCHS": epochs, "TRAIN.BATCH_SIZE": 4, "TRAIN.LEARNING_RATE": 3e-3,
            "TRAIN.LOG_EVERY": 2, "DEVICE.DEVICE": "cpu", "TRAIN.SEED": 7}
    over.update(extra)
    return load_config(0, overrides=over)


@pytest.fixture
def captured():
    lines: list[str] = []
    sid = logger.add(lambda m: lines.append(str(m).rstrip("\n")), format="[{time:HH:mm:ss}] {message}", level="INFO")
    yield lines
    logger.remove(sid)


def test_log_lines_checkpoints_and_loss_drop(tmp_path, captured):
    res = fit(tiny_cfg(tmp_path, epochs=3), task=TinyTask())
    text = "\n".join(captured)
    ts = r"\[\d\d:\d\d:\d\d\] "
    assert re.search(ts + r"Created dataset\.\.\.$", text, re.M)
    assert re.search(ts + r"Loaded 16 training samples", text, re.M)
    assert re.search(ts + r"Model created with [\d,]+ parameters$", text, re.M)
    assert re.search(ts + r"Epoch 1/3$", text, re.M)
    assert re.search(ts + r"  Batch 0/4, Loss: \d+\.\d{4}$", text, re.M)
    assert re.search(ts + r"  Batch 2/4, Loss: \d+\.\d{4}$", text, re.M)
    assert not re.search(r"Batch 1/4", text)  # LOG_EVERY=2
    assert re.search(ts + r"Epoch 1 completed, Average Loss: \d+\.\d{4}$", text, re.M)
    ckdir = ck.checkpoint_dir(str(tmp_path), 0)
    assert re.search(ts + "Checkpoint saved: " + re.escape(ck.epoch_path(ckdir, 0, 1)) + "$", text, re.M)
    assert re.search(ts + r"New best model saved with loss: \d+\.\d{4}$", text, re.M)
    assert "Validation Loss" in text and "quad_acc" in text
    for name in ("stage0_epoch_1.pth", "stage0_epoch_2.pth", "stage0_epoch_3.pth", "stage0_best.pth",
                 "stage0_final.pth"):
        assert (Path(ckdir) / name).is_file(), name
    state = torch.load(Path(ckdir) / "stage0_final.pth", weights_only=True)  # plain values only
    for key in ck.REQUIRED_KEYS:
        assert key in state, key
    assert state["epoch"] == 3 and state["config"]["TRAIN"]["EPOCHS"] == 3
    assert state["arch"]["name"] == "unet"
    # best = lowest validation loss, not training loss
    best = torch.load(Path(ckdir) / "stage0_best.pth", weights_only=True)
    assert best["val_loss"] == min(h["val_loss"] for h in res.history)
    # the loss drops within these few steps (12 optimizer steps)
    first_batch = float(re.search(r"Batch 0/4, Loss: (\d+\.\d+)", text).group(1))
    assert res.history[-1]["loss"] < 0.8 * first_batch, (first_batch, res.history)
    assert not list(Path(ckdir).glob(".*.tmp*"))  # atomic writes leave nothing behind


def test_resume_equals_uninterrupted(tmp_path):
    fit(tiny_cfg(tmp_path / "a", epochs=3), task=TinyTask())
    part = fit(tiny_cfg(tmp_path / "b", epochs=3), task=TinyTask(), stop_after_epoch=1)
    assert part.epochs_completed == 1
    assert not (Path(ck.checkpoint_dir(str(tmp_path / "b"), 0)) / "stage0_final.pth").exists()
    rest = fit(tiny_cfg(tmp_path / "b", epochs=3), task=TinyTask(), resume=True)
    assert rest.resumed_from.endswith("stage0_epoch_1.pth")
    assert [h["epoch"] for h in rest.history] == [1, 2, 3]
    a = torch.load(Path(ck.checkpoint_dir(str(tmp_path / "a"), 0)) / "stage0_final.pth", weights_only=True)
    b = torch.load(Path(ck.checkpoint_dir(str(tmp_path / "b"), 0)) / "stage0_final.pth", weights_only=True)
    for k, v in a["model_state_dict"].items():
        assert torch.equal(v, b["model_state_dict"][k]), k
    assert a["loss"] == b["loss"] and a["best_loss"] == b["best_loss"]
    sa, sb = a["optimizer_state_dict"]["state"], b["optimizer_state_dict"]["state"]
    assert all(torch.equal(sa[i]["exp_avg"], sb[i]["exp_avg"]) for i in sa)
    assert a["scheduler_state_dict"]["last_epoch"] == b["scheduler_state_dict"]["last_epoch"] == 12


def test_resume_without_checkpoints_starts_fresh_and_skips_truncated(tmp_path, captured):
    fit(tiny_cfg(tmp_path, epochs=2), task=TinyTask(n_val=0), stop_after_epoch=2)
    ckdir = Path(ck.checkpoint_dir(str(tmp_path), 0))
    e2 = ckdir / "stage0_epoch_2.pth"
    e2.write_bytes(e2.read_bytes()[:1000])  # a save that died half-way (not ours: ours are atomic)
    res = fit(tiny_cfg(tmp_path, epochs=3), task=TinyTask(n_val=0), resume=True)
    assert res.resumed_from.endswith("stage0_epoch_1.pth")
    assert "Skipping unreadable checkpoint" in "\n".join(captured)
    assert [h["epoch"] for h in res.history] == [1, 2, 3]
    fresh = fit(tiny_cfg(tmp_path / "new", epochs=1), task=TinyTask(n_val=0), resume=True)
    assert fresh.epochs_completed == 1 and not fresh.resumed_from


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, captured):
    with pytest.raises(TrainingDiverged) as err:
        fit(tiny_cfg(tmp_path, epochs=3), task=TinyTask(nan_at_epoch=2))
    msg = str(err.value)
    assert "\n" not in msg and "nan" in msg and "epoch 2" in msg and "stage0_epoch_1.pth" in msg
    ckdir = Path(ck.checkpoint_dir(str(tmp_path), 0))
    assert (ckdir / "stage0_epoch_1.pth").is_file() and not (ckdir / "stage0_epoch_2.pth").exists()
    state = ck.load_checkpoint(ckdir / "stage0_epoch_1.pth")
    assert all(torch.isfinite(v).all() for v in state["model_state_dict"].values() if v.is_floating_point())


def test_debug_mode_uses_few_samples_and_saves_images(tmp_path, captured):
    cfg = tiny_cfg(tmp_path, epochs=1, **{"DEBUG.ENABLED": True, "DEBUG.N_SAMPLES": 4})
    res = fit(cfg, task=TinyTask())
    assert res.history[0]["images_per_s"] > 0
    text = "\n".join(captured)
    assert "Loaded 4 training samples" in text and "Batch 0/1, Loss" in text
    assert list((tmp_path / "debug" / "stage0" / "epoch_1").glob("input_*.png"))
    assert not torch.is_anomaly_enabled()


def test_unknown_stage_and_missing_stage_module():
    from ecgtrace.train.tasks import get_task

    with pytest.raises(EcgTraceError, match="use 0, 1 or 2"):
        get_task(7)
    with pytest.raises(EcgTraceError, match="cannot load task"):
        get_task("no_such_module_xyz:TASK")


def test_scheduler_warmup_and_decay():
    from ecgtrace.train.engine import make_scheduler

    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=1.0)
    sch = make_scheduler(opt, 100)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sch.step()
    assert lrs[0] < lrs[4] <= 1.0 and math.isclose(max(lrs), 1.0) and lrs[-1] < 0.1


def test_train_command_dump_config_and_stage_all(tmp_path, capsys, monkeypatch):
    import yaml

    from ecgtrace.cli import main as cli_main
    from ecgtrace.train import tasks

    assert cli_main(["train", "--stage", "0", "--preset", "small", "--dump-config", "TRAIN.EPOCHS=7"]) == 0
    dumped = yaml.safe_load(capsys.readouterr().out)
    assert dumped["TRAIN"]["EPOCHS"] == 7 and dumped["MODEL"]["INPUT_SIZE"] == [256, 320]

    def fake_get_task(stage):
        if int(stage) == 0:
            return TinyTask(n_val=0)
        raise tasks.StageNotAvailable(f"stage {stage} training is not available yet (test)")

    monkeypatch.setattr(tasks, "get_task", fake_get_task)
    rc = cli_main(["train", "--stage", "all", f"OUTPUT.ROOT={tmp_path}", "TRAIN.EPOCHS=1", "TRAIN.BATCH_SIZE=8",
                   "DEVICE.DEVICE=cpu"])
    err = capsys.readouterr().err
    assert rc == 0
    assert "stage 1 training is not available yet" in err and "stage 2 training is not available yet" in err
    assert (tmp_path / "stage0_checkpoints" / "stage0_final.pth").is_file()
    assert cli_main(["train", "--stage", "1"]) == 2  # a single unavailable stage is an error (one line)
    assert "stage 1 training is not available yet" in capsys.readouterr().err


def test_model_init_starts_from_a_checkpoint_and_refuses_a_mismatch(tmp_path, captured):
    """MODEL.INIT: fine-tuning starts from another run's weights (its first loss is already low);
    a checkpoint of another architecture is a one-line error, not a silent partial load."""
    first = fit(tiny_cfg(tmp_path / "a", epochs=3), task=TinyTask())
    best = Path(ck.checkpoint_dir(str(tmp_path / "a"), 0)) / "stage0_best.pth"
    captured.clear()
    fit(tiny_cfg(tmp_path / "b", epochs=1, **{"MODEL.INIT": str(best)}), task=TinyTask())
    text = "\n".join(captured)
    assert "Initialised weights from " + str(best) in text
    start = float(re.search(r"Batch 0/4, Loss: (\d+\.\d+)", text).group(1))
    assert start < first.history[0]["loss"], (start, first.history)
    other = tmp_path / "other.pth"
    ck.save_checkpoint({"model_state_dict": {"w": torch.zeros(3)}, "epoch": 1}, other)
    with pytest.raises(EcgTraceError, match="does not fit this model"):
        fit(tiny_cfg(tmp_path / "c", epochs=1, **{"MODEL.INIT": str(other)}), task=TinyTask())
