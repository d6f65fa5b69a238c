"""Reading pictures and writing results: signals CSV, WFDB records, JSON reports, overlays, plots.

Every writer is atomic (temp file + ``os.replace``): a failed run never leaves a
half-written file behind.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd

from ecgtrace import paper
from ecgtrace.errors import EcgTraceError
from ecgtrace.stages.base import as_bgr

#: Largest picture we open (pixels): beyond this a decoded image would take GBs of memory.
MAX_PIXELS = 80_000_000
#: Pictures with a longer side than this are scaled down before stage 0 (a phone photo is ~4000 px).
WORK_MAX_SIDE = 4400
MIN_SIDE = 200
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")

#: One colour per row key (BGR) for overlays.
ROW_COLORS = {"row0": (255, 80, 0), "row1": (0, 160, 0), "row2": (200, 0, 200), paper.RHYTHM_KEY: (0, 120, 255)}


# --------------------------------------------------------------------------- reading
def read_image(path: str | Path) -> np.ndarray:
    """Read a picture as BGR uint8, with a one-line error for empty, unreadable, tiny or huge files."""
    p = Path(path)
    if not p.exists():
        raise EcgTraceError(f"{p}: file not found")
    if p.is_dir():
        raise EcgTraceError(f"{p}: is a folder; pass image files, or the folder to `ecgtrace digitize`")
    if p.stat().st_size == 0:
        raise EcgTraceError(f"{p}: empty file; re-export or re-copy the picture")
    try:  # check the size from the header before decoding anything large
        from PIL import Image

        Image.MAX_IMAGE_PIXELS = None  # we enforce our own limit below, with a clearer message
        with Image.open(p) as im:
            w, h = im.size
        if w * h > MAX_PIXELS:
            raise EcgTraceError(f"{p}: image is {w}x{h} ({w * h / 1e6:.0f} MP), more than "
                                f"{MAX_PIXELS / 1e6:.0f} MP; scale it down (a 200-300 dpi scan is enough)")
    except EcgTraceError:
        raise
    except Exception:  # PIL could not parse the header: let OpenCV try, it reports below
        pass
    img = cv2.imread(str(p), cv2.IMREAD_COLOR)
    if img is None:
        raise EcgTraceError(f"{p}: not a readable image (supported: {', '.join(IMAGE_SUFFIXES)})")
    return check_image(img, str(p))


def check_image(img: np.ndarray, what: str = "image") -> np.ndarray:
    """Validate an in-memory picture (BGR/grey/BGRA uint8) and return it as BGR uint8."""
    img = as_bgr(img, what)
    h, w = img.shape[:2]
    if min(h, w) < MIN_SIDE:
        raise EcgTraceError(f"{what}: image is only {w}x{h} px; an ECG page needs at least {MIN_SIDE} px a side "
                            "(200 dpi, 2200x1700, is best)")
    if h * w > MAX_PIXELS:
        raise EcgTraceError(f"{what}: image is {w}x{h}, more than {MAX_PIXELS / 1e6:.0f} MP; scale it down")
    return img


def list_images(inputs: list[str | Path]) -> list[Path]:
    """Expand files and folders (non-recursive) into a sorted list of picture paths; other files are kept
    as given so that the caller reports them."""
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            out += sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES)
        else:
            out.append(p)
    return out


# --------------------------------------------------------------------------- atomic writes
def _atomic_path(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(f".{path.name}.tmp{os.getpid()}{path.suffix}")


def write_signals_csv(df: pd.DataFrame, path: str | Path) -> Path:
    """Write a signal table: column ``time_s`` then the 12 leads in mV (empty cells outside a lead's window)."""
    path = Path(path)
    tmp = _atomic_path(path)
    out = df.copy()
    out.insert(0, "time_s", np.round(df.index.to_numpy(dtype=np.float64), 9))
    out.to_csv(tmp, index=False, float_format="%.6g")
    os.replace(tmp, path)
    return path


def write_json(obj: Any, path: str | Path) -> Path:
    """Write a JSON report (NumPy scalars/arrays converted)."""
    path = Path(path)
    tmp = _atomic_path(path)
    tmp.write_text(json.dumps(obj, indent=2, default=_json_default))
    os.replace(tmp, path)
    return path


def _json_default(o: Any) -> Any:
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (np.floating, np.integer, np.bool_)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"cannot write {type(o).__name__} to JSON")


def write_wfdb(df: pd.DataFrame, fs: float, directory: str | Path, name: str,
               comments: list[str] | None = None) -> Path:
    """Write the 12 leads as a WFDB record ``directory/name.{hea,dat}`` (16-bit, 1 uV per unit).

    Samples outside a lead's window (NaN) are stored as WFDB's "no sample" value and read
    back as NaN by ``wfdb.rdrecord``; a comment line in the header says so.
    """
    import wfdb

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    safe = "".join(c if c.isalnum() or c in "_-" else "_" for c in name) or "record"
    sig = df[list(paper.LEADS)].to_numpy(dtype=np.float64)
    sig = np.where(np.isfinite(sig), np.clip(sig, -32.0, 32.0), np.nan)
    notes = list(comments or []) + ["ecgtrace: leads other than II hold only their 2.5 s window; "
                                    "other samples are stored as missing (NaN)"]
    tmpdir = Path(tempfile.mkdtemp(prefix=".wfdb", dir=directory))
    try:
        wfdb.wrsamp(safe, fs=float(fs), units=["mV"] * len(paper.LEADS), sig_name=list(paper.LEADS), p_signal=sig,
                    fmt=["16"] * len(paper.LEADS), adc_gain=[1000.0] * len(paper.LEADS),
                    baseline=[0] * len(paper.LEADS), comments=notes, write_dir=str(tmpdir))
        for ext in (".hea", ".dat"):
            os.replace(tmpdir / f"{safe}{ext}", directory / f"{safe}{ext}")
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return directory / f"{safe}.hea"


def write_image(img: np.ndarray, path: str | Path) -> Path:
    """Write a picture atomically (format from the suffix)."""
    path = Path(path)
    tmp = _atomic_path(path)
    if not cv2.imwrite(str(tmp), img):
        raise EcgTraceError(f"could not write {path}; check the folder is writable")
    os.replace(tmp, path)
    return path


# --------------------------------------------------------------------------- geometry back to the photo
def sample_map(map_xy: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Bilinear lookup of a dense (H, W, 2) map at points (N, 2) (x, y); points outside are clamped."""
    h, w = map_xy.shape[:2]
    p = np.asarray(pts, dtype=np.float64).reshape(-1, 2)
    x = np.clip(p[:, 0], 0, w - 1)
    y = np.clip(p[:, 1], 0, h - 1)
    x0 = np.minimum(np.floor(x).astype(np.int64), w - 2 if w > 1 else 0)
    y0 = np.minimum(np.floor(y).astype(np.int64), h - 2 if h > 1 else 0)
    fx = (x - x0)[:, None]
    fy = (y - y0)[:, None]
    x1 = np.minimum(x0 + 1, w - 1)
    y1 = np.minimum(y0 + 1, h - 1)
    m = map_xy.astype(np.float64)
    return ((1 - fx) * (1 - fy) * m[y0, x0] + fx * (1 - fy) * m[y0, x1]
            + (1 - fx) * fy * m[y1, x0] + fx * fy * m[y1, x1])


def apply_homography(hmat: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Map points (N, 2) through a 3x3 homography."""
    p = np.asarray(pts, dtype=np.float64).reshape(-1, 2)
    q = np.concatenate([p, np.ones((len(p), 1))], axis=1) @ np.asarray(hmat, dtype=np.float64).T
    return q[:, :2] / np.where(np.abs(q[:, 2:]) < 1e-12, 1e-12, q[:, 2:])


def rectified_to_original(pts: np.ndarray, map_xy: np.ndarray | None, homography: np.ndarray | None) -> np.ndarray:
    """Rectified-page px -> original-photo px: stage-1 ``map_xy`` (rectified -> normalized), then the
    inverse of the stage-0 homography (original -> normalized)."""
    p = np.asarray(pts, dtype=np.float64).reshape(-1, 2)
    if map_xy is not None:
        p = sample_map(map_xy, p)
    if homography is not None:
        p = apply_homography(np.linalg.inv(np.asarray(homography, dtype=np.float64)), p)
    return p


def draw_overlay(image: np.ndarray, traces: dict[str, np.ndarray], labels: dict[str, tuple[np.ndarray, str]] | None = None,
                 title: str | None = None) -> np.ndarray:
    """Draw traces (key -> (N, 2) px in ``image``) in per-row colours, plus optional text labels."""
    out = image.copy()
    scale = max(out.shape[:2]) / 2200.0
    th = max(1, int(round(2 * scale)))
    for key, pts in traces.items():
        p = np.asarray(pts, dtype=np.float64)
        p = p[np.all(np.isfinite(p), axis=1)]
        if len(p) < 2:
            continue
        color = ROW_COLORS.get(key, (0, 0, 255))
        cv2.polylines(out, [np.round(p * 16).astype(np.int32).reshape(-1, 1, 2)], False, color, th, cv2.LINE_AA,
                      shift=4)
    for text, (xy, key) in (labels or {}).items():
        color = ROW_COLORS.get(key, (0, 0, 255))
        org = (int(round(xy[0])), int(round(xy[1])))
        cv2.putText(out, text, org, cv2.FONT_HERSHEY_SIMPLEX, 0.9 * scale, (255, 255, 255), max(1, 4 * th),
                    cv2.LINE_AA)
        cv2.putText(out, text, org, cv2.FONT_HERSHEY_SIMPLEX, 0.9 * scale, color, max(1, 2 * th // 2 + 1),
                    cv2.LINE_AA)
    if title:
        cv2.putText(out, title, (int(20 * scale), int(40 * scale)), cv2.FONT_HERSHEY_SIMPLEX, 1.0 * scale,
                    (0, 0, 255), max(1, 2 * th // 2 + 1), cv2.LINE_AA)
    return out


def plot_signals(df: pd.DataFrame, fs: float, path: str | Path | None = None, title: str | None = None):
    """A matplotlib figure of the 12 leads (6 rows x 2 columns, mV against s); saved when ``path`` is given."""
    import matplotlib

    if path is not None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(6, 2, figsize=(14, 12), sharex=True)
    t = df.index.to_numpy(dtype=np.float64)
    for i, lead in enumerate(paper.LEADS):
        ax = axes[i % 6, i // 6]
        ax.plot(t, df[lead].to_numpy(dtype=np.float64), lw=0.8, color="k")
        ax.set_ylabel(f"{lead}\nmV")
        ax.grid(True, lw=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("time (s)")
    fig.suptitle(title or f"ecgtrace: 12 leads at {fs:g} Hz")
    fig.tight_layout()
    if path is not None:
        path = Path(path)
        tmp = _atomic_path(path)
        fig.savefig(tmp, dpi=90)
        os.replace(tmp, path)
        plt.close(fig)
    return fig
