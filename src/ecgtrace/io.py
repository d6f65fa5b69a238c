"""Reading and checking pictures, and writing results: signals CSV, WFDB records, JSON, overlays, plots.

Every writer is atomic (:func:`atomic_write`: temp file + ``os.replace``): a failed run
never leaves a half-written file behind. :func:`check_image` is the one validator of
picture arrays, used by the pipeline and by every stage.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd

from ecgtrace import paper
from ecgtrace.errors import EcgTraceError, StageError

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
    except Exception:  # noqa: BLE001 - PIL could not parse the header: let OpenCV try, it reports below
        pass
    img = cv2.imread(str(p), cv2.IMREAD_COLOR)
    if img is None:
        raise EcgTraceError(f"{p}: not a readable image (supported: {', '.join(IMAGE_SUFFIXES)})")
    return check_image(img, str(p))


def as_bgr(img: object, what: str = "image") -> np.ndarray:
    """Any picture array (grey, BGR, BGRA; uint8 or float in 0..1 or 0..255) as contiguous BGR uint8.

    Raises :class:`StageError` (one line) for anything that is not such an array.
    """
    if not isinstance(img, np.ndarray):
        raise StageError(f"{what}: expected an image array (cv2.imread), got {type(img).__name__}")
    if img.ndim not in (2, 3) or img.size == 0 or (img.ndim == 3 and img.shape[2] not in (1, 3, 4)):
        raise StageError(f"{what}: expected an image array (H, W) or (H, W, 1|3|4), got shape {img.shape}")
    if img.dtype != np.uint8:
        f = np.nan_to_num(img.astype(np.float64))
        if np.issubdtype(img.dtype, np.floating) and f.max() <= 1.0:
            f = f * 255.0
        img = np.clip(f, 0, 255).astype(np.uint8)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    elif img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
    return np.ascontiguousarray(img)


def _std(img: np.ndarray) -> float:
    """``img.std()`` over all pixels and channels, from OpenCV's per-channel moments (ten times faster)."""
    mean, sd = cv2.meanStdDev(img)
    m, s = mean.ravel(), sd.ravel()
    return float(np.sqrt(max(0.0, float(np.mean(s * s + m * m) - np.mean(m) ** 2))))


def check_image(img: object, what: str = "image", min_side: int = MIN_SIDE, reject_blank: bool = False) -> np.ndarray:
    """Validate a picture array and return it as BGR uint8 (see :func:`as_bgr`).

    One-line :class:`StageError` for a non-image, a picture under ``min_side`` px a side, one
    over :data:`MAX_PIXELS`, and (``reject_blank``) a single-colour one.
    """
    img = as_bgr(img, what)
    h, w = img.shape[:2]
    if min(h, w) < min_side:
        raise StageError(f"{what}: image is {w}x{h} px, too small to hold a readable ECG; use a picture at least "
                         f"{max(min_side, MIN_SIDE)} px a side (200 dpi, 2200x1700, is best)")
    if h * w > MAX_PIXELS:
        raise StageError(f"{what}: image is {w}x{h}, more than {MAX_PIXELS / 1e6:.0f} MP; scale it down")
    if reject_blank and _std(img) < 2.0:
        raise StageError(f"{what}: image is blank (a single colour); check the file")
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
@contextmanager
def atomic_write(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success it replaces ``path``, on any error it is removed.

    ``with atomic_write(out) as tmp: cv2.imwrite(str(tmp), img)`` never leaves a half-written
    ``out`` behind. The temp name keeps the suffix, so writers that pick a format by it work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


#: How a signal table writes its numbers (6 significant digits; a missing sample is an empty cell).
CSV_FLOAT_FORMAT = "%.6g"


def signals_csv_text(df: pd.DataFrame) -> str:
    """The text :func:`write_signals_csv` writes: ``df.to_csv(index=False, float_format=CSV_FLOAT_FORMAT)`` of
    ``time_s`` and ``df``'s columns, byte for byte. A table of float columns with plain names is formatted here, a
    column at a time (pandas formats cell by cell: 65 -> 20 ms for a 10 s record at 500 Hz); any other goes to pandas."""
    time_s = np.round(df.index.to_numpy(dtype=np.float64), 9)
    names = ["time_s", *map(str, df.columns)]
    plain = (all(dt == np.float64 for dt in df.dtypes) and len(set(names)) == len(names)
             and not any(set(n) & set(',"\r\n') for n in names))
    if not plain or not len(df):
        out = df.copy()
        out.insert(0, "time_s", time_s)
        return out.to_csv(index=False, float_format=CSV_FLOAT_FORMAT, lineterminator="\n")
    fmt = CSV_FLOAT_FORMAT
    cols = [[fmt % v if v == v else "" for v in col] for col in (time_s.tolist(), *(df[c].tolist() for c in df.columns))]
    return ",".join(names) + "\n" + "".join(",".join(row) + "\n" for row in zip(*cols))


def write_signals_csv(df: pd.DataFrame, path: str | Path) -> Path:
    """Write a signal table: column ``time_s`` then the 12 leads in mV (empty cells outside a lead's window)."""
    path = Path(path)
    text = signals_csv_text(df)
    with atomic_write(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def write_json(obj: Any, path: str | Path) -> Path:
    """Write a JSON report (NumPy scalars/arrays converted)."""
    path = Path(path)
    text = json.dumps(obj, indent=2, default=_json_default)
    with atomic_write(path) as tmp:
        tmp.write_text(text)
    return path


def _json_default(o: Any) -> Any:
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (np.floating, np.integer, np.bool_)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"cannot write {type(o).__name__} to JSON")


#: WFDB storage of the leads: 16-bit samples, 1000 units (1 uV) per mV, baseline 0; a missing sample is -32768.
WFDB_GAIN = 1000.0
WFDB_NAN = -32768


def wfdb_record_bytes(sig: np.ndarray, fs: float, name: str, sig_names: list[str],
                      comments: list[str]) -> tuple[str, bytes]:
    """The header text and the samples of a format-16 WFDB record of the physical signals ``sig`` (n, k) in mV, as
    ``wfdb.wrsamp(name, fs, units=["mV"] * k, sig_name, p_signal=sig, fmt=["16"] * k, adc_gain=[WFDB_GAIN] * k,
    baseline=[0] * k, comments)`` writes them, byte for byte (wfdb's own writer spends 60 ms on a record's header
    fields; this, 2 ms)."""
    d = np.asarray(sig, dtype=np.float64) * WFDB_GAIN  # wfdb's adc: times the gain, plus the baseline, rounded
    missing = np.isnan(d)
    d = np.round(d + 0.0)
    d[missing] = WFDB_NAN
    d = d.astype(np.int64)
    n, k = d.shape
    checksums = np.sum(d, axis=0) % 65536
    fs = float(fs)
    fs_text = str(int(fs)) if round(fs, 8) == float(int(fs)) else str(fs)
    lines = [f"{name} {k} {fs_text} {n}"]
    lines += [f"{name}.dat 16 {WFDB_GAIN}(0)/mV 16 0 {int(d[0, c]) if n else 0} {int(checksums[c])} 0 {sig_names[c]}"
              for c in range(k)]
    lines += [f"# {c}" for c in comments]
    return "".join(f"{line}\n" for line in lines), d.astype("<i2").tobytes()


def write_wfdb(df: pd.DataFrame, fs: float, directory: str | Path, name: str,
               comments: list[str] | None = None) -> Path:
    """Write the 12 leads as a WFDB record ``directory/name.{hea,dat}`` (16-bit, 1 uV per unit).

    Samples outside a lead's window (NaN) are stored as WFDB's "no sample" value and read
    back as NaN by ``wfdb.rdrecord``; a comment line in the header says so. The files are those
    ``wfdb.wrsamp`` writes (:func:`wfdb_record_bytes`), each written whole or not at all.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    safe = "".join(c if c.isalnum() or c in "_-" else "_" for c in name) or "record"
    sig = df[list(paper.LEADS)].to_numpy(dtype=np.float64)
    sig = np.where(np.isfinite(sig), np.clip(sig, -32.0, 32.0), np.nan)
    notes = list(comments or []) + ["ecgtrace: leads other than II hold only their 2.5 s window; "
                                    "other samples are stored as missing (NaN)"]
    header, samples = wfdb_record_bytes(sig, fs, safe, list(paper.LEADS), notes)
    with atomic_write(directory / f"{safe}.dat") as tmp:
        tmp.write_bytes(samples)
    with atomic_write(directory / f"{safe}.hea") as tmp:  # the header last: a record with a header is whole
        tmp.write_text(header, encoding="utf-8")
    return directory / f"{safe}.hea"


def write_image(img: np.ndarray, path: str | Path) -> Path:
    """Write a picture atomically (format from the suffix)."""
    path = Path(path)
    with atomic_write(path) as tmp:
        if not cv2.imwrite(str(tmp), img):
            raise EcgTraceError(f"could not write {path}; check the folder is writable")
    return path


# --------------------------------------------------------------------------- pictures
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
        with atomic_write(path) as tmp:
            fig.savefig(tmp, dpi=90)
        plt.close(fig)
    return fig
