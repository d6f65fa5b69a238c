"""Data sets in the competition layout: write synthetic ones, read real or synthetic ones the same way.

Layout (PhysioNet ECG image digitization)::

    train.csv                      id, fs, sig_len
    train/{id}/{id}.csv            I,II,III,aVR,aVL,aVF,V1..V6; II full, others only in their 2.5 s window
    train/{id}/{id}-{NNNN}.png     one image per variant
    test.csv                       id, lead, fs, number_of_rows
    test/{id}.png

ecgtrace adds, for synthetic sets only: ``train/{id}/{id}-{NNNN}.gt.npz`` (ground
truth of each image), and the hidden test truth ``test_solution.csv`` (official
solution format: id ``{image_id}_{row}_{lead}``, fs, value), ``test_variants.csv``
and ``test_gt/{id}.gt.npz``. The reader never needs them.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from loguru import logger
from tqdm import tqdm

from ecgtrace.data.groundtruth import GroundTruth
from ecgtrace.data.signals import FS_CHOICES, find_wfdb_records, read_wfdb_record
from ecgtrace.data.synthetic import (
    CLEAN,
    PageSample,
    SyntheticPages,
    apply_variant,
    check_variants,
    competition_frame,
)
from ecgtrace.errors import EcgTraceError
from ecgtrace.paper import CANONICAL, LEADS, Page, csv_rows

MARKER_FILE = "ecgtrace_synth.json"
IMAGE_EXTS = (".png", ".jpg", ".jpeg")
_PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 1]  # fast; clean pages still compress well


@dataclass
class DatasetSummary:
    """What :func:`write_dataset` wrote."""

    root: str
    n_train: int
    n_test: int
    variants: tuple[str, ...]
    images: int
    seconds: float
    fs_counts: dict[str, int] = field(default_factory=dict)


# --- writer ---------------------------------------------------------------------------
def _record_ids(seed: int, count: int) -> list[str]:
    """``count`` distinct random integer ids (as strings), deterministic for ``seed``."""
    rng = np.random.default_rng([int(seed), 7919])
    ids: list[int] = []
    seen: set[int] = set()
    while len(ids) < count:
        for v in rng.integers(1_000, 4_000_000_000, size=max(16, 2 * (count - len(ids)))):
            if int(v) not in seen:
                seen.add(int(v))
                ids.append(int(v))
                if len(ids) == count:
                    break
    return [str(v) for v in ids]


def _fs_text(fs: float) -> int | float:
    return int(fs) if float(fs).is_integer() else float(fs)


_WORKER_PAGES: SyntheticPages | None = None


def _init_worker(pages: SyntheticPages) -> None:
    global _WORKER_PAGES
    _WORKER_PAGES = pages
    cv2.setNumThreads(1)


def _write_one(task: tuple) -> dict:
    """Render one record in all its variants and write its files under the temp root."""
    split, index, rid, variants, tmp_root = task
    pages = _WORKER_PAGES
    assert pages is not None
    image, gt, signals, fs = pages.clean(index)
    frame = competition_frame(signals, fs)
    root = Path(tmp_root)
    n = len(frame)
    out = {"split": split, "id": rid, "fs": fs, "sig_len": n}
    for v in variants:
        rng = pages.variant_rng(index, v)
        img_v, gt_v = apply_variant(image.copy(), gt, v, rng, orientation=pages.orientation)
        if split == "train":
            folder = root / "train" / rid
            folder.mkdir(parents=True, exist_ok=True)
            _imwrite(folder / f"{rid}-{v}.png", img_v)
            gt_v.save(folder / f"{rid}-{v}.gt.npz")
        else:
            _imwrite(root / "test" / f"{rid}.png", img_v)
            gt_v.save(root / "test_gt" / f"{rid}.gt.npz")
            out["variant"] = v
    if split == "train":
        frame.to_csv(root / "train" / rid / f"{rid}.csv", index=False, float_format="%.5f")
    else:
        out["values"] = {lead: frame[lead].to_numpy()[slice(*csv_rows(lead, fs, n))] for lead in LEADS}
    return out


def _imwrite(path: Path, img: np.ndarray) -> None:
    if not cv2.imwrite(str(path), img, _PNG_PARAMS):
        raise EcgTraceError(f"could not write image {path}; check free disk space and permissions")


def _is_dataset_dir(path: Path) -> bool:
    return (path / MARKER_FILE).exists() or (path / "train.csv").exists()


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise EcgTraceError(f"output {out} is a file; pass a folder path (it will be created)")
    if out.is_dir() and any(out.iterdir()) and not _is_dataset_dir(out):
        raise EcgTraceError(f"output folder {out} is not empty and is not a data set; pass a new or empty folder")


def _usable_wfdb(folder: str | Path, need: int) -> list[str]:
    """Paths of up to ``need`` readable WFDB records under ``folder`` (broken ones skipped with a warning)."""
    paths, errors = [], []
    candidates = find_wfdb_records(folder)
    for p in candidates:
        try:
            read_wfdb_record(p)
            paths.append(str(p))
        except EcgTraceError as e:
            errors.append(str(e))
            logger.warning(f"skipping {e}")
        if len(paths) >= need:
            break
    if not paths:
        raise EcgTraceError(f"none of the {len(candidates)} WFDB record(s) under {folder} is usable; "
                            f"first problem: {errors[0]}")
    return paths


def write_dataset(out: str | Path, n: int, variants=(CLEAN,), seed: int = 0, workers: int = 1, n_test: int = 0,
                  fs: float | None = None, wfdb: str | Path | None = None, page: Page = CANONICAL,
                  method: str = "parametric", progress: bool = True) -> DatasetSummary:
    """Render ``n`` training records (every variant) and ``n_test`` test records into ``out``.

    Everything is written into a temporary sibling folder that is renamed to
    ``out`` only when complete; an existing synthetic data set at ``out`` is
    replaced. The result depends only on the arguments (not on ``workers``).
    """
    t_start = time.time()
    out = Path(out)
    variants = check_variants(variants)
    if n < 1 and n_test < 1:
        raise EcgTraceError(f"nothing to write: n={n}, n_test={n_test}; ask for at least one record")
    if n < 0 or n_test < 0:
        raise EcgTraceError("n and n_test must be >= 0")
    if fs is not None and float(fs) <= 0:
        raise EcgTraceError(f"fs must be positive, got {fs}")
    _check_out(out)
    wfdb_paths = _usable_wfdb(wfdb, n + n_test) if wfdb else None
    if wfdb_paths and len(wfdb_paths) < n + n_test:
        logger.warning(f"only {len(wfdb_paths)} usable WFDB record(s) for {n + n_test} records: they are reused "
                       "(with different page styles), so train and test may share signals")
    pages = SyntheticPages(n + n_test, variants=variants, seed=seed, page=page,
                           fs_choices=(float(fs),) if fs else FS_CHOICES, method=method, wfdb_paths=wfdb_paths)
    ids = _record_ids(seed, n + n_test)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    (tmp / "train").mkdir(parents=True)
    if n_test:
        (tmp / "test").mkdir()
        (tmp / "test_gt").mkdir()
    tasks = [("train", i, ids[i], variants, str(tmp)) for i in range(n)]
    tasks += [("test", n + k, ids[n + k], (variants[k % len(variants)],), str(tmp)) for k in range(n_test)]
    try:
        results = []
        bar = tqdm(total=len(tasks), desc="rendering records", unit="rec", disable=not progress)
        if workers <= 1:
            _init_worker(pages)
            for t in tasks:
                results.append(_write_one(t))
                bar.update()
        else:
            ctx = mp.get_context("spawn" if os.name == "nt" else "fork")
            with ctx.Pool(workers, initializer=_init_worker, initargs=(pages,)) as pool:
                for r in pool.imap(_write_one, tasks, chunksize=1):
                    results.append(r)
                    bar.update()
        bar.close()
        _write_tables(tmp, results)
        (tmp / MARKER_FILE).write_text(json.dumps({
            "generator": "ecgtrace synth", "n": n, "n_test": n_test, "variants": list(variants), "seed": seed,
            "fs": fs, "wfdb": str(wfdb) if wfdb else None, "dpi": page.dpi, "method": method}, indent=1))
        _swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    train = [r for r in results if r["split"] == "train"]
    fs_counts: dict[str, int] = {}
    for r in results:
        fs_counts[str(_fs_text(r["fs"]))] = fs_counts.get(str(_fs_text(r["fs"])), 0) + 1
    return DatasetSummary(root=str(out), n_train=len(train), n_test=len(results) - len(train), variants=variants,
                          images=len(train) * len(variants) + (len(results) - len(train)),
                          seconds=time.time() - t_start, fs_counts=fs_counts)


def _write_tables(root: Path, results: list[dict]) -> None:
    train = [r for r in results if r["split"] == "train"]
    test = [r for r in results if r["split"] == "test"]
    pd.DataFrame({"id": [int(r["id"]) for r in train], "fs": [_fs_text(r["fs"]) for r in train],
                  "sig_len": [r["sig_len"] for r in train]}).to_csv(root / "train.csv", index=False)
    if not test:
        return
    rows, sol = [], []
    for r in test:
        for lead in LEADS:
            vals = r["values"][lead]
            rows.append((int(r["id"]), lead, _fs_text(r["fs"]), len(vals)))
            sol.append(pd.DataFrame({
                "id": [f"{r['id']}_{k}_{lead}" for k in range(len(vals))],
                "fs": _fs_text(r["fs"]),
                "value": vals,
            }))
    pd.DataFrame(rows, columns=["id", "lead", "fs", "number_of_rows"]).to_csv(root / "test.csv", index=False)
    pd.concat(sol, ignore_index=True).to_csv(root / "test_solution.csv", index=False, float_format="%.5f")
    pd.DataFrame({"id": [int(r["id"]) for r in test], "variant": [r["variant"] for r in test]}).to_csv(
        root / "test_variants.csv", index=False)


def _swap_into_place(tmp: Path, out: Path) -> None:
    """Rename ``tmp`` to ``out``; an old data set or empty folder at ``out`` is removed only after that works."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
    try:
        os.replace(tmp, out)
    except OSError:
        if old is not None:
            os.replace(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# --- reader -------------------------------------------------------------------------------
def _read_csv(path: Path, what: str, need: tuple[str, ...]) -> pd.DataFrame:
    try:
        df = pd.read_csv(path, dtype={"id": str})
    except Exception as e:
        raise EcgTraceError(f"cannot read {what} {path}: {e}".replace("\n", " ")) from e
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise EcgTraceError(f"{path} lacks column(s) {', '.join(missing)}; expected {', '.join(need)}")
    return df


def _split_images(folder: Path, rid: str) -> dict[str, Path]:
    """variant -> image path for the images ``{rid}-{NNNN}.png`` of one record folder."""
    out = {}
    if not folder.is_dir():
        return out
    for p in sorted(folder.iterdir()):
        if p.suffix.lower() in IMAGE_EXTS and p.stem.startswith(f"{rid}-"):
            out[p.stem[len(rid) + 1:]] = p
    return out


def validate_dataset(root: str | Path, split: str = "train") -> dict:
    """Check that ``root`` holds a ``split`` in the competition layout; returns a short summary.

    Raises :class:`EcgTraceError` saying what is missing (no train.csv, record
    folders, images, ...). Ground-truth sidecars are optional (real data has none).
    """
    root = Path(root)
    hint = "make one with `ecgtrace synth --out DIR`, or point at the competition data folder"
    if not root.exists():
        raise EcgTraceError(f"data folder {root} does not exist; {hint}")
    if not root.is_dir():
        raise EcgTraceError(f"{root} is a file, not a data folder; {hint}")
    if split not in ("train", "test"):
        raise EcgTraceError(f"unknown split {split!r}; use 'train' or 'test'")
    if split == "train":
        if not (root / "train.csv").exists():
            raise EcgTraceError(f"{root} has no train.csv, so it is not a data set in the competition layout "
                                f"(train.csv, train/{{id}}/{{id}}.csv, train/{{id}}/{{id}}-NNNN.png); {hint}")
        table = _read_csv(root / "train.csv", "train.csv", ("id", "fs", "sig_len"))
        if not (root / "train").is_dir():
            raise EcgTraceError(f"{root} has train.csv but no train/ folder with the record folders; {hint}")
        ids = list(table["id"])
        no_folder = [i for i in ids if not (root / "train" / i).is_dir()]
        if ids and len(no_folder) == len(ids):
            raise EcgTraceError(f"none of the {len(ids)} record folders listed in train.csv exists under "
                                f"{root / 'train'} (first: {no_folder[0]}); {hint}")
        n_img, variants, no_img, no_csv, sidecars = 0, set(), [], [], 0
        for i in ids:
            imgs = _split_images(root / "train" / i, i)
            n_img += len(imgs)
            variants |= set(imgs)
            sidecars += sum((root / "train" / i / f"{i}-{v}.gt.npz").exists() for v in imgs)
            if not imgs:
                no_img.append(i)
            if not (root / "train" / i / f"{i}.csv").exists():
                no_csv.append(i)
        if n_img == 0:
            raise EcgTraceError(f"no images ({{id}}-NNNN.png) in any record folder under {root / 'train'}; {hint}")
        if no_folder:
            logger.warning(f"{len(no_folder)} record folder(s) listed in train.csv are missing, e.g. {no_folder[:3]}")
        if no_img:
            logger.warning(f"{len(no_img)} record(s) have no image, e.g. {no_img[:3]}")
        if no_csv:
            logger.warning(f"{len(no_csv)} record(s) have no signal CSV, e.g. {no_csv[:3]}")
        return {"split": "train", "records": len(ids), "images": n_img, "variants": sorted(variants),
                "sidecars": sidecars, "missing_folders": no_folder, "missing_images": no_img,
                "missing_signals": no_csv}
    if not (root / "test.csv").exists():
        raise EcgTraceError(f"{root} has no test.csv (id, lead, fs, number_of_rows); {hint}")
    table = _read_csv(root / "test.csv", "test.csv", ("id", "lead", "fs", "number_of_rows"))
    ids = list(dict.fromkeys(table["id"]))
    found = [i for i in ids if any((root / "test" / f"{i}{e}").exists() for e in IMAGE_EXTS)]
    if not found:
        raise EcgTraceError(f"none of the {len(ids)} test images listed in test.csv exists under {root / 'test'}; "
                            f"expected test/{{id}}.png")
    missing = [i for i in ids if i not in set(found)]
    if missing:
        logger.warning(f"{len(missing)} test image(s) are missing, e.g. {missing[:3]}")
    return {"split": "test", "records": len(ids), "images": len(found), "missing_images": missing,
            "has_solution": (root / "test_solution.csv").exists()}


class PageSource:
    """Pages of a data set folder (real competition data or ``ecgtrace synth`` output) as :class:`PageSample`.

    Args:
        root: the folder holding train.csv / test.csv.
        split: ``"train"`` (one item per image and variant) or ``"test"`` (one per test image).
        variants: keep only these variant codes (train split), e.g. ``("0001", "0003")``.
    """

    def __init__(self, root: str | Path, split: str = "train", variants=None) -> None:
        self.root = Path(root)
        self.split = split
        self.summary = validate_dataset(self.root, split)
        keep = set(check_variants_loose(variants)) if variants else None
        self.items: list[tuple[str, str, Path, float]] = []
        if split == "train":
            table = _read_csv(self.root / "train.csv", "train.csv", ("id", "fs", "sig_len"))
            for rid, fs in zip(table["id"], table["fs"]):
                for v, p in _split_images(self.root / "train" / rid, rid).items():
                    if keep is None or v in keep:
                        self.items.append((rid, v, p, float(fs)))
            if not self.items:
                raise EcgTraceError(f"no images of variant(s) {', '.join(sorted(keep or []))} in {self.root}; "
                                    f"it has {', '.join(self.summary['variants'])}")
        else:
            table = _read_csv(self.root / "test.csv", "test.csv", ("id", "lead", "fs", "number_of_rows"))
            fs_of = dict(zip(table["id"], table["fs"]))
            var_path = self.root / "test_variants.csv"
            var_of = dict(zip(*_read_csv(var_path, "test_variants.csv", ("id", "variant"))[["id", "variant"]]
                              .astype(str).T.values)) if var_path.exists() else {}
            for rid in dict.fromkeys(table["id"]):
                p = next((self.root / "test" / f"{rid}{e}" for e in IMAGE_EXTS
                          if (self.root / "test" / f"{rid}{e}").exists()), None)
                v = str(var_of.get(rid, "unknown")).zfill(4) if rid in var_of else "unknown"
                if p is not None and (keep is None or v in keep):
                    self.items.append((rid, v, p, float(fs_of[rid])))
        self._solution: pd.DataFrame | None = None

    def __len__(self) -> int:
        return len(self.items)

    def _gt_path(self, rid: str, variant: str) -> Path:
        if self.split == "train":
            return self.root / "train" / rid / f"{rid}-{variant}.gt.npz"
        return self.root / "test_gt" / f"{rid}.gt.npz"

    def _signals(self, rid: str, fs: float) -> pd.DataFrame | None:
        if self.split == "train":
            p = self.root / "train" / rid / f"{rid}.csv"
            if not p.exists():
                return None
            df = pd.read_csv(p)
            return df.reindex(columns=list(LEADS))
        if not (self.root / "test_solution.csv").exists():
            return None
        if self._solution is None:
            sol = pd.read_csv(self.root / "test_solution.csv", dtype={"id": str})
            parts = sol["id"].str.split("_", expand=True)
            sol["rid"], sol["row"], sol["lead"] = parts[0], parts[1].astype(int), parts[2]
            self._solution = sol
        sol = self._solution[self._solution["rid"] == rid]
        n = int(sol.loc[sol["lead"] == "II", "row"].max()) + 1 if (sol["lead"] == "II").any() else 0
        frame = pd.DataFrame({lead: np.full(n, np.nan) for lead in LEADS})
        for lead, g in sol.groupby("lead"):
            i0, _ = csv_rows(str(lead), fs, n)
            frame.loc[i0 + g["row"].to_numpy(), str(lead)] = g["value"].to_numpy()
        return frame

    def __getitem__(self, k: int) -> PageSample:
        rid, variant, path, fs = self.items[k]
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise EcgTraceError(f"cannot read image {path}; the file is damaged or not an image")
        gp = self._gt_path(rid, variant)
        gt = GroundTruth.load(gp) if gp.exists() else None
        return PageSample(image=image, gt=gt, signals=self._signals(rid, fs), fs=fs, record_id=rid, variant=variant)

    def __iter__(self):
        for k in range(len(self)):
            yield self[k]


def check_variants_loose(variants) -> tuple[str, ...]:
    """Variant filter for reading: codes normalised to 4 digits, no check that they can be rendered."""
    if isinstance(variants, str):
        variants = variants.split(",")
    return tuple(str(v).strip().zfill(4) if str(v).strip().isdigit() else str(v).strip() for v in variants)
