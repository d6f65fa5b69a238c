"""``--workers N``: the same files as one process, a bad picture or a dead worker fails only itself."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from ecgtrace.batch import build_pipeline, run_pool, threads_per_worker
from ecgtrace.cli import main
from ecgtrace.commands.digitize import Picture, digitize_picture
from ecgtrace.data.render import RenderStyle, render_page
from ecgtrace.data.signals import synthesize_ecg
from ecgtrace.paper import Page

TINY = Page(dpi=50)  # 550 x 425 px pictures: small files (the pipeline works on its canonical page anyway)
CLASSICAL = {"classical": True}  # the classical path, whatever weights ship
OUTPUTS = (".csv", ".hea", ".dat", "_overlay.png")


def assert_same_pages(text: str, single: Path, out: Path, n: int = 3) -> None:
    """The per-picture lines of ``text`` name page0.. in order, and ``out`` holds ``single``'s files, byte for byte."""
    assert [line.split(":")[0].strip() for line in text.splitlines() if line.startswith("  page")] == \
        [f"page{k}.png" for k in range(n)]
    for k in range(n):
        for suffix in OUTPUTS:
            a, b = single / f"page{k}{suffix}", out / f"page{k}{suffix}"
            assert a.read_bytes() == b.read_bytes(), b.name


def write_tiny_pages(folder: Path, n: int = 3) -> Path:
    """``page0.png`` ... : n tiny rendered pages (tests/test_ray_engine.py uses the same)."""
    for k in range(n):
        sig = synthesize_ecg(np.random.default_rng(10 + k), fs=250.0)
        img, _ = render_page(sig, 250.0, page=TINY, style=RenderStyle(), rng=np.random.default_rng(k))
        cv2.imwrite(str(folder / f"page{k}.png"), img)
    return folder


@pytest.fixture(scope="module")
def pages(tmp_path_factory) -> Path:
    return write_tiny_pages(tmp_path_factory.mktemp("pages"))


def digitize(inputs: list[Path], out: Path, workers: int) -> int:
    return main(["digitize", *map(str, inputs), "-o", str(out), "--fs", "250", "--workers", str(workers), "--classical"])


@pytest.fixture(scope="module")
def single(pages, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("w1")
    assert digitize([pages], out, 1) == 0
    return out


def test_threads_share_the_cores():
    assert threads_per_worker(1, cores=2) == 2
    assert threads_per_worker(2, cores=2) == 1
    assert threads_per_worker(4, cores=2) == 1
    assert threads_per_worker(3, cores=16) == 5


def test_two_workers_write_the_same_files_and_skip_a_corrupt_picture(pages, single, tmp_path, capsys):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not a picture")
    out = tmp_path / "w2"
    capsys.readouterr()
    rc = digitize([pages, broken], out, 2)
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "digitized 3 of 4" in text and f"FAILED {broken}" in text
    # the per-picture lines come in the order given, whichever worker finished first
    assert_same_pages(text, single, out)
    assert not list(out.glob("broken*"))


def _die_on_page1(pipe, job: Picture) -> dict:
    """A worker that is killed (no exception, no cleanup) while on one picture."""
    if job.name == "page1":
        os._exit(7)
    return digitize_picture(pipe, job)


def test_a_dead_worker_fails_its_picture_only(pages, single, tmp_path):
    out = tmp_path / "killed"
    out.mkdir()
    jobs = [Picture(pages / f"page{k}.png", f"page{k}", out, 250.0) for k in (0, 1, 2)]
    got = dict(run_pool(jobs, _die_on_page1, build_pipeline, (None, CLASSICAL), workers=2))
    assert sorted(got) == [0, 1, 2]
    assert not got[1].ok and "died (exit code 7)" in got[1].error
    assert got[0].ok and got[2].ok
    for k in (0, 2):
        assert (single / f"page{k}.csv").read_bytes() == (out / f"page{k}.csv").read_bytes()
    assert not (out / "page1.csv").exists()


def test_one_worker_runs_in_process_in_order():
    got = list(run_pool([3, 1, 2], lambda s, t: s * t, lambda: 10, workers=1))
    assert [(i, o.value) for i, o in got] == [(0, 30), (1, 10), (2, 20)]
    bad = list(run_pool([1, 0], lambda s, t: s // t, lambda: 1, workers=1))
    assert bad[0][1].ok and not bad[1][1].ok and "ZeroDivisionError" in bad[1][1].error


def test_engine_ray_without_ray_is_one_line(pages, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as if it were not installed
    out = tmp_path / "o"
    assert main(["digitize", str(pages), "-o", str(out), "--classical", "--engine", "ray"]) == 2
    assert capsys.readouterr().err.strip() == "ecgtrace: error: --engine ray needs Ray: pip install 'ecgtrace[ray]'"
    assert not out.exists()  # said before any work
