"""Pages drawn by ECG-Image-Kit, read from the generator's own output layout (a transfer set).

ECG-Image-Kit's batch generator (the one that drew the PhysioNet images) writes, per record
``R`` and image ``k``, into one folder::

    R.hea / R.dat     WFDB record, mV; with --mask_unplotted_samples NaN where a lead is not drawn
                      (lead II: the full 10 s rhythm strip; the others: their 2.5 s window)
    R-k.png           the page (.jpg accepted too)
    R-k.json          with --store_config: sampling_frequency, width, height, x_grid/y_grid
                      (px per 5 mm), resolution, pad_inches, the flags used (crop, rotate, ...),
                      and ``leads``: lead_name, start_sample, end_sample, plotted_pixels
                      ([row, col] per plotted sample), lead_bounding_box, text_bounding_box

:func:`find_eik_pages` reads such a folder, or a folder of such folders (searched
recursively), into :class:`EikPage` objects: the picture, the 12-lead truth at the record's
rate (NaN where not plotted) and, where the JSON's pixel positions can be trusted, the drawn
trace of each lead in x, y pixels. :func:`find_pages` also accepts a data set in the
competition layout (``train.csv`` + ``train/{id}/{id}.csv`` + ``train/{id}/{id}-NNNN.png``),
so one evaluation loop serves both.

Known gaps of the generator, honoured here: ``plotted_pixels`` are not moved by its padding
(``pad_inches``) or its crop, and after a rotation they are rewritten only when a bounding-box
flag was on; such pages get ``traces_px = None`` with the reason in ``traces_note``.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from loguru import logger

from ecgtrace.data.signals import normalize_lead, wfdb_leads
from ecgtrace.errors import EcgTraceError
from ecgtrace.paper import LEADS, RHYTHM_KEY

#: Picture suffixes the generator (or a re-encoding of its output) uses.
IMAGE_EXTS = (".png", ".jpg", ".jpeg")
_IMAGE_RE = re.compile(r"^(?P<record>.+)-(?P<k>\d+)$")
#: Bytes per sample of the WFDB formats we can size-check (others are only read).
_FMT_BYTES = {"8": 1.0, "16": 2.0, "24": 3.0, "32": 4.0, "61": 2.0, "80": 1.0, "160": 2.0, "212": 1.5,
              "310": 4.0 / 3.0, "311": 4.0 / 3.0}
_LAYOUT_HINT = ("expected ECG-Image-Kit output (R.hea/R.dat + R-0.png [+ R-0.json]) or a competition data set "
                "(train.csv + train/{id}/{id}.csv + train/{id}/{id}-NNNN.png)")


@dataclass
class EikPage:
    """One picture with its truth.

    Attributes:
        image: path of the picture.
        record: the record it was drawn from: WFDB path without extension (ECG-Image-Kit), or the
            record's signal CSV (competition layout).
        subset: sub-folder relative to the searched root (``"clean"``); the root's own name for
            pages directly in it; the variant code (``"0001"``) in the competition layout.
        image_id: the picture's stem, e.g. ``"dev01-0"``.
        fs: sampling rate of the truth (the record's), Hz.
        truth: lead (:data:`LEADS`) -> full-length float array in mV, NaN where the lead is not plotted.
        meta: the generator's JSON, or None when the picture has none.
        traces_px: drawn trace per lead -> (N, 2) x, y pixels of the plotted samples (the rhythm strip
            under :data:`ecgtrace.paper.RHYTHM_KEY`), or None when the JSON lacks them or they are wrong
            for this picture (see :attr:`traces_note`).
        traces_note: why :attr:`traces_px` is None ("" when it is set).
        trace_samples: same keys as :attr:`traces_px` -> (start_sample, end_sample) of each trace.
    """

    image: Path
    record: Path
    subset: str
    image_id: str
    fs: float
    truth: dict[str, np.ndarray] = field(repr=False)
    meta: dict | None = field(default=None, repr=False)
    traces_px: dict[str, np.ndarray] | None = field(default=None, repr=False)
    traces_note: str = ""
    trace_samples: dict[str, tuple[int, int]] = field(default_factory=dict, repr=False)

    @property
    def page_fs(self) -> float:
        """The rate the generator says it drew the page at (JSON ``sampling_frequency``), else :attr:`fs`."""
        if self.meta is not None:
            try:
                v = float(self.meta.get("sampling_frequency"))
                if math.isfinite(v) and v > 0:
                    return v
            except (TypeError, ValueError):
                pass
        return self.fs

    @property
    def n_samples(self) -> int:
        """Length of the truth arrays."""
        return int(len(next(iter(self.truth.values())))) if self.truth else 0


# --------------------------------------------------------------------------- records
def _dat_problem(rec_path: Path, header) -> str | None:
    """A one-line reason when a data file of the record is missing or shorter than its header says."""
    sizes: dict[str, float] = {}
    fmts = header.fmt or []
    spf = header.samps_per_frame or [1] * len(fmts)
    offs = header.byte_offset or [None] * len(fmts)
    for j, fname in enumerate(header.file_name or []):
        dat = rec_path.parent / fname
        if not dat.exists():
            return f"data file {dat} is missing"
        per = _FMT_BYTES.get(str(fmts[j]) if j < len(fmts) else "")
        if per is None:
            continue
        sizes[fname] = sizes.get(fname, float(offs[j] or 0)) + per * float(spf[j] or 1)
    n = int(header.sig_len or 0)
    for fname, per_frame in sizes.items():
        dat = rec_path.parent / fname
        need = int(math.ceil(per_frame * n)) if n else 0
        have = dat.stat().st_size
        if have < need:
            return f"data file {dat} is truncated ({have} bytes where the header needs {need})"
    return None


def read_truth(rec_path: str | Path) -> tuple[float, dict[str, np.ndarray]]:
    """Read a WFDB record (path without extension) -> (fs, lead -> full-length mV array, NaN where missing).

    Lead names are normalised (``AVR`` -> ``aVR``). Raises :class:`EcgTraceError` naming the file
    when the header or the data file is missing, corrupt, truncated or fails its checksum, or when a
    lead is missing.
    """
    import wfdb

    rec_path = Path(rec_path)
    hea = rec_path.with_suffix(".hea")
    fix = "re-copy the record or remove it from the folder"
    if not hea.exists():
        raise EcgTraceError(f"header file {hea} is missing; {fix}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            header = wfdb.rdheader(str(rec_path))
    except Exception as e:  # noqa: BLE001 - wfdb raises many types; all mean "unreadable header"
        raise EcgTraceError(f"header file {hea} is corrupt ({type(e).__name__}: {e}); {fix}".replace("\n", " ")) from e
    if not header.fs or header.fs <= 0 or not header.n_sig:
        raise EcgTraceError(f"header file {hea} gives no sampling rate or no signals; {fix}")
    problem = _dat_problem(rec_path, header)
    if problem:
        raise EcgTraceError(f"{problem}; {fix}")
    dats = ", ".join(str(rec_path.parent / f) for f in dict.fromkeys(header.file_name or []))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rec = wfdb.rdrecord(str(rec_path), physical=False)
            if rec.checksum is not None:
                calc = [int(c) for c in rec.calc_checksum()]
                bad = [rec.sig_name[j] for j, (a, b) in enumerate(zip(calc, rec.checksum)) if b is not None
                       and int(a) != int(b)]
                if bad:
                    raise EcgTraceError(f"data file {dats} is corrupt (checksum mismatch in lead(s) "
                                        f"{', '.join(bad)}); {fix}")
            data = np.asarray(rec.dac(return_res=64), dtype=np.float64)
    except EcgTraceError:
        raise
    except Exception as e:  # noqa: BLE001
        raise EcgTraceError(f"data file {dats} is corrupt or truncated ({type(e).__name__}: {e}); "
                            f"{fix}".replace("\n", " ")) from e
    return float(rec.fs), wfdb_leads(rec, data, f"record {hea}")


# --------------------------------------------------------------------------- page JSON
def _image_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from the picture's header, without decoding it; None when unreadable."""
    try:
        from PIL import Image

        with Image.open(path) as im:
            return int(im.size[0]), int(im.size[1])
    except Exception:  # noqa: BLE001 - the pipeline reports unreadable pictures itself
        return None


def _nonzero(v: Any) -> bool:
    try:
        return abs(float(v)) > 0
    except (TypeError, ValueError):
        return bool(v)


def traces_from_meta(meta: dict, image_size: tuple[int, int] | None = None
                     ) -> tuple[dict[str, np.ndarray] | None, str, dict[str, tuple[int, int]]]:
    """The JSON's ``plotted_pixels`` -> (key -> (N, 2) x, y px, note, key -> (start, end) samples).

    Keys are :data:`LEADS` names for the 2.5 s cells and :data:`ecgtrace.paper.RHYTHM_KEY` for the
    full-length strip of the rhythm lead (``<lead>_rhythm`` for another rhythm lead). The traces are
    None, with the reason as the note, when the generator's pixels are wrong for the picture: padding
    or crop (never applied to them), a rotation without bounding boxes (then they are not rewritten),
    or a picture whose size differs from the JSON's width x height.
    """
    leads = meta.get("leads")
    if not isinstance(leads, list) or not leads or not any(isinstance(e, dict) and e.get("plotted_pixels")
                                                           for e in leads):
        return None, "the JSON has no plotted_pixels", {}
    if _nonzero(meta.get("pad_inches", 0)):
        return None, f"pad_inches={meta.get('pad_inches')}: the generator does not move plotted_pixels by its padding", {}
    if _nonzero(meta.get("crop", 0)):
        return None, f"crop={meta.get('crop')}: the generator does not move plotted_pixels by its crop", {}
    has_bbox = any(isinstance(e, dict) and ("lead_bounding_box" in e or "text_bounding_box" in e) for e in leads)
    if _nonzero(meta.get("rotate", 0)) and not has_bbox:
        return None, (f"rotate={meta.get('rotate')} without bounding boxes: the generator did not rewrite "
                      "plotted_pixels after rotating"), {}
    w, h = meta.get("width"), meta.get("height")
    if image_size is not None and w is not None and h is not None and tuple(image_size) != (int(w), int(h)):
        return None, (f"the picture is {image_size[0]}x{image_size[1]} px but the JSON says {w}x{h}: "
                      "plotted_pixels do not fit it"), {}
    entries = [(normalize_lead(e.get("lead_name")), e) for e in leads if isinstance(e, dict)]
    entries = [(lead, e) for lead, e in entries if lead is not None and e.get("plotted_pixels")]

    def span(e: dict) -> int:
        return int(e.get("end_sample", 0)) - int(e.get("start_sample", 0))

    # a lead drawn twice (the rhythm lead): its longest entry is the rhythm strip, the other its 2.5 s cell
    rhythm_ids = set()
    for lead in {x for x, _ in entries}:
        same = [e for x, e in entries if x == lead]
        if len(same) > 1:
            rhythm_ids.add(id(max(same, key=span)))
    traces: dict[str, np.ndarray] = {}
    samples: dict[str, tuple[int, int]] = {}
    for lead, e in entries:
        key = (RHYTHM_KEY if lead == "II" else f"{lead}_rhythm") if id(e) in rhythm_ids else lead
        if key in traces:
            continue
        arr = np.asarray(e["plotted_pixels"], dtype=np.float64).reshape(-1, 2)
        traces[key] = arr[:, ::-1].copy()  # [row, col] -> x, y
        samples[key] = (int(e.get("start_sample", 0)), int(e.get("end_sample", 0)))
    if not traces:
        return None, "no plotted_pixels entry names a standard lead", {}
    if image_size is not None:
        allp = np.concatenate(list(traces.values()))
        inside = np.mean((allp[:, 0] >= -1) & (allp[:, 0] <= image_size[0]) & (allp[:, 1] >= -1)
                         & (allp[:, 1] <= image_size[1]))
        if inside < 0.99:
            return None, f"{100 * (1 - inside):.0f} % of plotted_pixels fall outside the picture", {}
    return traces, "", samples


def _read_meta(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        logger.warning(f"{path}: unreadable page JSON ({e}); scoring the page without it")
        return None
    if not isinstance(meta, dict):
        logger.warning(f"{path}: the page JSON is not an object; scoring the page without it")
        return None
    return meta


# --------------------------------------------------------------------------- folders
def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTS
                  and not p.name.startswith("."))


def _record_of(img: Path) -> Path | None:
    """The WFDB record an image ``R-k.png`` belongs to (``R``), when its header exists."""
    m = _IMAGE_RE.match(img.stem)
    if m and (img.parent / f"{m['record']}.hea").exists():
        return img.parent / m["record"]
    if (img.parent / f"{img.stem}.hea").exists():  # an image named like its record
        return img.parent / img.stem
    return None


def is_eik_folder(path: str | Path) -> bool:
    """True when ``path`` (or a folder below it) holds at least one WFDB record with a picture ``R-k.png``."""
    path = Path(path)
    if not path.is_dir():
        return False
    return any(_record_of(p) is not None for p in _image_files(path))


def find_eik_pages(root: str | Path) -> list[EikPage]:
    """Every picture with its record under ``root`` (ECG-Image-Kit layout, searched recursively).

    Several pictures of one record (``R-0``, ``R-1``) are separate pages. A picture without a JSON is
    still a page (``meta`` None, a logged note). Raises :class:`EcgTraceError` (one line) when the
    folder is missing or holds no such page, when a picture has no record, or when a record is
    corrupt (naming the file).
    """
    root = Path(root)
    if not root.exists():
        raise EcgTraceError(f"data folder {root} does not exist; {_LAYOUT_HINT}")
    if not root.is_dir():
        raise EcgTraceError(f"{root} is a file, not a folder; pass the folder of pages ({_LAYOUT_HINT})")
    images = _image_files(root)
    heads = sorted(root.rglob("*.hea"))
    if not heads:
        what = f"{len(images)} picture(s) but no WFDB record (*.hea)" if images else "no WFDB records and no pictures"
        raise EcgTraceError(f"{root} holds {what}; {_LAYOUT_HINT}")
    pages: list[EikPage] = []
    truths: dict[Path, tuple[float, dict[str, np.ndarray]]] = {}
    orphans = []
    no_json = []
    for img in images:
        rec = _record_of(img)
        if rec is None:
            orphans.append(img)
            continue
        if rec not in truths:
            truths[rec] = read_truth(rec)
        fs, truth = truths[rec]
        rel = img.parent.relative_to(root)
        subset = rel.as_posix() if rel.parts else root.name
        meta = _read_meta(img.with_suffix(".json"))
        if meta is None:
            no_json.append(img.name)
            traces, note, samples = None, "no page JSON", {}
        else:
            traces, note, samples = traces_from_meta(meta, _image_size(img))
            mfs = meta.get("sampling_frequency")
            if mfs is not None and _nonzero(mfs) and abs(float(mfs) - fs) > 1e-6:
                logger.warning(f"{img.name}: the JSON says {mfs} Hz but record {rec.name} is at {fs:g} Hz")
        pages.append(EikPage(image=img, record=rec, subset=subset, image_id=img.stem, fs=fs,
                             truth={k: v.copy() for k, v in truth.items()}, meta=meta, traces_px=traces,
                             traces_note=note, trace_samples=samples))
    if orphans:
        raise EcgTraceError(f"picture {orphans[0]} has no record ({orphans[0].parent}/<record>.hea/.dat for "
                            f"<record>-<k>{orphans[0].suffix})" + (f" and {len(orphans) - 1} more" if len(orphans) > 1
                                                                    else "") + "; add the records or remove the pictures")
    used = set(truths)
    lonely = [h.with_suffix("") for h in heads if h.with_suffix("") not in used]
    if lonely:
        logger.info(f"{len(lonely)} record(s) without a picture skipped, e.g. {lonely[0]}")
    if not pages:
        raise EcgTraceError(f"{root} holds {len(heads)} WFDB record(s) but no picture <record>-<k>.png beside "
                            f"any of them; {_LAYOUT_HINT}")
    if no_json:
        logger.info(f"{len(no_json)} picture(s) without a page JSON (scored, no trace pixels), e.g. {no_json[0]}")
    return pages


def _competition_pages(root: Path) -> list[EikPage]:
    """The train split of a competition-layout data set as pages (truth from the per-record CSVs)."""
    import pandas as pd

    from ecgtrace.data.dataset import PageSource

    src = PageSource(root, split="train")
    pages = []
    frames: dict[str, pd.DataFrame] = {}
    for rid, variant, path, fs in src.items:
        csv = root / "train" / rid / f"{rid}.csv"
        if rid not in frames:
            if not csv.exists():
                raise EcgTraceError(f"record {rid} has no signal file {csv}; add it or remove the record's images")
            try:
                frames[rid] = pd.read_csv(csv)
            except Exception as e:  # noqa: BLE001
                raise EcgTraceError(f"signal file {csv} is corrupt ({type(e).__name__}: {e}); re-copy it") from e
            frames[rid].columns = [normalize_lead(c) or c for c in frames[rid].columns]
        df = frames[rid]
        missing = [lead for lead in LEADS if lead not in df.columns]
        if missing:
            raise EcgTraceError(f"signal file {csv} lacks lead(s) {', '.join(missing)}")
        truth = {lead: df[lead].to_numpy(dtype=np.float64) for lead in LEADS}
        pages.append(EikPage(image=path, record=csv, subset=variant, image_id=path.stem, fs=float(fs), truth=truth,
                             meta=None, traces_px=None, traces_note="the competition layout has no page JSON"))
    return pages


def find_pages(root: str | Path) -> list[EikPage]:
    """Pages of ``root`` in either layout: a competition data set (train.csv) or ECG-Image-Kit output."""
    from ecgtrace.data.dataset import _is_dataset_dir

    root = Path(root)
    if root.is_dir() and _is_dataset_dir(root):
        return _competition_pages(root)
    return find_eik_pages(root)

