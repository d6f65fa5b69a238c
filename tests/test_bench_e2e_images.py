"""bench_e2e.py --images: a folder's pictures, its sub-folders in turn, and a clear stop on a bad folder or picture."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_e2e", ROOT / "bench" / "bench_e2e.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_e2e"] = mod  # its dataclass looks its module up there
    spec.loader.exec_module(mod)
    return mod


def test_folder_pages_take_subfolders_in_turn(tmp_path: Path) -> None:
    for sub, n in (("aug", 3), ("bw", 1)):
        (tmp_path / sub).mkdir()
        for i in range(n):
            cv2.imwrite(str(tmp_path / sub / f"dev{i:02d}-0.png"), np.full((240, 320, 3), 40 * i, np.uint8))
    (tmp_path / "aug" / "notes.txt").write_text("not a picture")
    pages = _bench().folder_pages(str(tmp_path), 3)
    assert [p.variant for p in pages] == ["aug/dev00-0", "bw/dev00-0", "aug/dev01-0"]
    assert pages[2].image.shape == (240, 320, 3) and int(pages[2].image[0, 0, 0]) == 40


def test_folder_pages_stop_on_an_empty_or_short_folder_or_an_unreadable_picture(tmp_path: Path) -> None:
    bench = _bench()
    with pytest.raises(SystemExit, match="no pictures there"):
        bench.folder_pages(str(tmp_path), 2)
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((240, 240, 3), np.uint8))
    with pytest.raises(SystemExit, match="needs 2"):
        bench.folder_pages(str(tmp_path), 2)
    (tmp_path / "b.png").write_bytes(b"")  # a picture that cannot be read: one line naming it
    with pytest.raises(SystemExit, match="b.png: empty file"):
        bench.folder_pages(str(tmp_path), 2)
