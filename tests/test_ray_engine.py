"""``--engine ray`` on a Ray cluster this test starts (one head node, 2 CPUs, loopback only): the same files as
one process, a corrupt picture or a dead Ray worker fails only that picture."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

# Ray reads these when it is imported (here, and in `ray start` below): the loopback interface only, and a
# token of this test's own (whatever ~/.ray/auth_token holds)
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ["RAY_AUTH_MODE"] = "token"
os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
ray = pytest.importorskip("ray")

from test_workers import CLASSICAL, TINY, assert_same_pages, write_tiny_pages  # noqa: E402

from ecgtrace.batch import build_pipeline  # noqa: E402
from ecgtrace.batch_ray import run_ray  # noqa: E402
from ecgtrace.cli import main  # noqa: E402
from ecgtrace.commands.digitize import Picture, digitize_shipped, ship_picture, write_landed  # noqa: E402

TESTS = Path(__file__).resolve().parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _kill_leftovers(marker: str) -> None:
    """SIGKILL any process of this cluster still running (their command lines name its temp folder)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if marker in (proc / "cmdline").read_bytes().decode(errors="replace"):
                os.kill(int(proc.name), signal.SIGKILL)
        except (OSError, ValueError):
            pass


@pytest.fixture(scope="module")
def cluster():
    """``ray start --head`` on 127.0.0.1 with 2 CPUs; its address. Stopped (and its processes gone) afterwards."""
    tmp = tempfile.mkdtemp(prefix="ecgray", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    port = _free_port()
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "OMP_NUM_THREADS": "1",
           "RAY_USAGE_STATS_ENABLED": "0",
           # the workers import this module for the test's own work function (_die_on_page1)
           "PYTHONPATH": os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH", "")) if p)}
    log = Path(tmp) / "ray_start.log"
    cmd = [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block", "--node-ip-address",
           "127.0.0.1", "--port", str(port), "--num-cpus", "2", "--include-dashboard=false",
           "--disable-usage-stats", "--temp-dir", tmp]
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while "Ray runtime started" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        yield f"127.0.0.1:{port}"
    finally:
        if ray.is_initialized():
            ray.shutdown()
        proc.send_signal(signal.SIGTERM)  # `ray start --block` stops its processes on SIGTERM
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        _kill_leftovers(tmp)
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def pages(tmp_path_factory) -> Path:
    return write_tiny_pages(tmp_path_factory.mktemp("pages"))


@pytest.fixture(scope="module")
def single(pages, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("w1")
    assert main(["digitize", str(pages), "-o", str(out), "--fs", "250", "--classical"]) == 0
    return out


def _report(path: Path) -> dict:
    rep = json.loads(path.read_text())
    rep.pop("timing_s")  # the only part that differs run to run
    return rep


def test_ray_writes_the_same_files_and_skips_a_corrupt_picture(pages, single, cluster, tmp_path, capsys):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not a picture")
    out = tmp_path / "ray"
    capsys.readouterr()
    # batches of 2: [page0, page1], [page2, broken]: the corrupt picture fails inside a batch
    rc = main(["digitize", str(pages), str(broken), "-o", str(out), "--fs", "250", "--classical",
               "--engine", "ray", "--ray-address", cluster, "--batch-size", "2"])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "digitized 3 of 4" in text
    assert f"FAILED {broken}: {broken}: not a readable image" in text  # the driver's path, as on one machine
    assert_same_pages(text, single, out)
    for k in range(3):
        assert _report(single / f"page{k}.json") == _report(out / f"page{k}.json")
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in single.iterdir())


@pytest.mark.slow  # 20 s here: a local and a Ray run of their own
def test_predict_on_ray_gives_the_same_submission(cluster, tmp_path):
    from ecgtrace.data.dataset import write_dataset

    data = tmp_path / "ds"
    write_dataset(data, n=0, n_test=2, seed=5, fs=250.0, page=TINY, progress=False)
    local, on_ray = tmp_path / "local.csv", tmp_path / "ray.csv"
    assert main(["predict", "--data", str(data), "-o", str(local), "--classical"]) == 0
    assert main(["predict", "--data", str(data), "-o", str(on_ray), "--classical", "--engine", "ray",
                 "--ray-address", cluster]) == 0
    assert local.read_bytes() == on_ray.read_bytes()


def _die_on_page1(pipe, shipped) -> tuple:
    """A Ray worker that is killed (no exception, no cleanup) while on one picture."""
    if shipped.task.name == "page1":
        os._exit(7)
    return digitize_shipped(pipe, shipped)


def test_a_dead_ray_worker_fails_its_picture_only(pages, single, cluster, tmp_path):
    out = tmp_path / "killed"
    out.mkdir()
    jobs = [Picture(pages / f"page{k}.png", f"page{k}", out, 250.0) for k in (0, 1, 2)]
    # batches [page0, page1], [page2]: the first one's worker dies; page0 and page1 run again alone
    got = dict(run_ray(jobs, _die_on_page1, build_pipeline, (None, CLASSICAL), workers=2, batch_size=2,
                       address=cluster, pack=ship_picture))
    assert sorted(got) == [0, 1, 2]
    assert not got[1].ok and "the Ray worker died on this picture" in got[1].error, got[1].error
    assert got[0].ok and got[2].ok
    for k in (0, 2):
        write_landed(jobs[k], got[k].value)
        assert (single / f"page{k}.csv").read_bytes() == (out / f"page{k}.csv").read_bytes()
    assert not (out / "page1.csv").exists()
    assert not ray.is_initialized()  # connected for the run only


def test_nothing_at_the_address_is_one_line(pages, tmp_path, capsys):
    address = f"127.0.0.1:{_free_port()}"  # Ray alone would retry for minutes
    t = time.monotonic()
    assert main(["digitize", str(pages), "-o", str(tmp_path / "o"), "--classical", "--engine", "ray",
                 "--ray-address", address]) == 2
    assert f"ecgtrace: error: could not connect to the Ray cluster at {address}: nothing answers" in \
        capsys.readouterr().err
    assert time.monotonic() - t < 30
