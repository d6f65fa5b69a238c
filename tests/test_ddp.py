"""Multi-process training through torchrun: 2 CPU processes, gloo backend, DistributedSampler, rank-0 files."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

TESTS = Path(__file__).resolve().parent
SRC = TESTS.parent / "src"

SCRIPT = textwrap.dedent("""
    import hashlib, json, os, sys
    sys.path[:0] = [{tests!r}, {src!r}]
    import torch
    torch.set_num_threads(1)
    from loguru import logger
    from test_engine import TinyTask, tiny_cfg
    from ecgtrace.train.engine import fit
    import ecgtrace.train.engine as eng

    logger.remove()
    logger.add(sys.stdout, format="[{{time:HH:mm:ss}}] {{message}}", level="INFO")
    seen = []
    orig = eng.DistributedSampler.__iter__
    def spy(self):
        idx = list(orig(self))
        seen.append(idx)
        return iter(idx)
    eng.DistributedSampler.__iter__ = spy
    captured = {{}}
    orig_fit_model = TinyTask.build_model
    def build(self, cfg):
        m = orig_fit_model(self, cfg)
        captured["model"] = m
        return m
    TinyTask.build_model = build
    res = fit(tiny_cfg({root!r}, epochs=2), task=TinyTask())
    digest = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in captured["model"].parameters())).hexdigest()
    rank = int(os.environ["RANK"])
    with open(os.path.join({root!r}, f"rank{{rank}}.json"), "w") as f:
        json.dump({{"digest": digest, "first_train_indices": seen[0], "world": int(os.environ["WORLD_SIZE"]),
                   "epochs": res.epochs_completed}}, f)
""")


@pytest.mark.slow
def test_two_gloo_processes(tmp_path):
    script = tmp_path / "ddp_run.py"
    script.write_text(SCRIPT.format(tests=str(TESTS), src=str(SRC), root=str(tmp_path)))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                       env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-3000:]
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    # DDP keeps the replicas identical
    assert r0["digest"] == r1["digest"] and r0["world"] == r1["world"] == 2 and r0["epochs"] == r1["epochs"] == 2
    # the DistributedSampler gives each process its own half of the 16 training samples
    a, b = set(r0["first_train_indices"]), set(r1["first_train_indices"])
    assert len(a) == len(b) == 8 and not (a & b) and (a | b) == set(range(16))
    # only rank 0 logs and writes
    assert p.stdout.count("Epoch 1/2") == 1 and p.stdout.count("Checkpoint saved:") == 2
    ckdir = tmp_path / "stage0_checkpoints"
    names = sorted(q.name for q in ckdir.glob("*.pth"))
    assert names == ["stage0_best.pth", "stage0_epoch_1.pth", "stage0_epoch_2.pth", "stage0_final.pth"]
    state = torch.load(ckdir / "stage0_final.pth", weights_only=True)
    assert state["world_size"] == 2
    assert not any(k.startswith("module.") for k in state["model_state_dict"])  # saved unwrapped
    # the epoch's average covers all 16 images of both processes
    assert "16 images in" in p.stdout
