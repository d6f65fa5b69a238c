"""Competition submission files: write, read, build, validate; and the truth to score them against.

A submission is a table ``id,value`` with one row per sample of each lead of
each test image: id ``{image_id}_{row}_{lead}`` (e.g. ``62_0_I``), value in mV,
rows ``0 .. number_of_rows - 1`` as ``test.csv`` (``id, lead, fs,
number_of_rows``) asks. CSV or parquet, chosen by the file suffix.

A solution (the hidden truth) has columns ``id, fs, value``. :func:`load_solution`
reads one from a file, from a synthetic data set's ``test_solution.csv`` (with
``test_variants.csv`` giving each test image's variant), or builds one from a
competition-layout train split (``train.csv`` + ``train/{id}/{id}.csv``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
from loguru import logger

from ecgtrace.errors import EcgTraceError
from ecgtrace.io import atomic_write
from ecgtrace.metric import as_arrow_strings, fit_length, parse_ids
from ecgtrace.paper import LEADS

SUBMISSION_COLUMNS = ("id", "value")
TEST_COLUMNS = ("id", "lead", "fs", "number_of_rows")
_ID_PATTERN = r"^.+_[0-9]+_(" + "|".join(LEADS) + r")$"
_SUFFIXES = (".csv", ".parquet", ".pq")


def _kind(path: Path) -> str:
    name = path.name.lower()
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    if name.endswith((".csv", ".csv.gz")):
        return "csv"
    raise EcgTraceError(f"{path}: unknown submission format; name it .csv or .parquet")


def row_ids(image_id: str, lead: str, n: int) -> list[str]:
    """The ids of one lead of one image: ``{image_id}_{row}_{lead}`` for row 0..n-1."""
    return [f"{image_id}_{r}_{lead}" for r in range(int(n))]


# --------------------------------------------------------------------------- write / read
def write_submission(sub: pd.DataFrame, path: str | Path, decimals: int | None = 6) -> Path:
    """Write ``id,value`` to ``path`` (.csv, .csv.gz or .parquet) atomically (temp file + rename).

    CSV values are rounded to ``decimals`` places (1e-6 mV by default: far below
    what the score can see) and written by pyarrow, ~10x faster than pandas;
    parquet keeps float64 exactly.
    """
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    path = Path(path)
    kind = _kind(path)
    missing = [c for c in SUBMISSION_COLUMNS if c not in sub.columns]
    if missing:
        raise EcgTraceError(f"submission table lacks column(s) {', '.join(missing)}; it needs id, value")
    try:
        values = pd.to_numeric(sub["value"]).to_numpy(dtype=np.float64, na_value=np.nan)
    except (TypeError, ValueError) as e:
        raise EcgTraceError(f"submission values must be numbers (mV): {e}") from e
    ids = sub["id"]
    ids = ids if pd.api.types.is_string_dtype(ids) else ids.astype(str)
    if kind == "csv" and decimals is not None:
        values = np.round(values, decimals)
    table = pa.table({"id": as_arrow_strings(ids), "value": pa.array(values)})
    try:
        with atomic_write(path) as tmp:
            if kind == "parquet":
                pq.write_table(table, tmp)
            else:
                # pyarrow quotes header names; write a plain header ourselves (ids hold no commas or quotes)
                opts = pcsv.WriteOptions(include_header=False, quoting_style="none")
                gz = path.name.lower().endswith(".gz")
                with (pa.CompressedOutputStream(str(tmp), "gzip") if gz else pa.OSFile(str(tmp), "wb")) as out:
                    out.write(b"id,value\n")
                    pcsv.write_csv(table, out, write_options=opts)
    except (OSError, pa.ArrowInvalid) as e:
        raise EcgTraceError(f"cannot write submission {path}: {e}") from e
    return path


def _arrow_to_pandas(table) -> pd.DataFrame:
    """Arrow table -> DataFrame with string columns kept as arrow strings (no millions of Python objects)."""
    import pyarrow as pa

    return table.to_pandas(types_mapper={pa.string(): pd.ArrowDtype(pa.string()),
                                         pa.large_string(): pd.ArrowDtype(pa.large_string())}.get)


def _read_table(path: Path, what: str) -> pd.DataFrame:
    if not path.exists():
        raise EcgTraceError(f"{what} {path} does not exist; check the path")
    if path.is_dir():
        raise EcgTraceError(f"{what} {path} is a folder; give the .csv or .parquet file")
    kind = _kind(path)
    try:
        if kind == "parquet":
            import pyarrow.parquet as pq

            df = _arrow_to_pandas(pq.read_table(path))
        else:
            try:  # pyarrow reads ~5x faster and keeps ids as arrow strings (no 20 M Python objects)
                import pyarrow as pa
                import pyarrow.csv as pcsv

                table = pcsv.read_csv(path, convert_options=pcsv.ConvertOptions(column_types={"id": pa.string()}))
                df = _arrow_to_pandas(table)
            except Exception:  # noqa: BLE001 - the pyarrow reader is strict about odd rows; pandas' C engine says more
                df = pd.read_csv(path, dtype={"id": str})
    except Exception as e:  # noqa: BLE001 - any parse failure becomes one line
        raise EcgTraceError(f"cannot read {what} {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
    if "id" in df.columns and not pd.api.types.is_string_dtype(df["id"]):
        df["id"] = df["id"].astype(str)
    return df


def read_submission(path: str | Path) -> pd.DataFrame:
    """Read an ``id,value`` submission (.csv or .parquet); clear error if it is not one."""
    path = Path(path)
    df = _read_table(path, "submission")
    missing = [c for c in SUBMISSION_COLUMNS if c not in df.columns]
    if missing:
        raise EcgTraceError(f"submission {path} lacks column(s) {', '.join(missing)} "
                            f"(has {', '.join(map(str, df.columns))}); it needs id,value")
    return df[list(SUBMISSION_COLUMNS)]


def read_test_csv(path: str | Path) -> pd.DataFrame:
    """Read ``test.csv`` (id, lead, fs, number_of_rows) with string ids."""
    path = Path(path)
    if path.is_dir():
        path = path / "test.csv"
    df = _read_table(path, "test table")
    missing = [c for c in TEST_COLUMNS if c not in df.columns]
    if missing:
        raise EcgTraceError(f"{path} lacks column(s) {', '.join(missing)}; test.csv has {', '.join(TEST_COLUMNS)}")
    df = df.copy()
    df["id"] = df["id"].astype(str)
    return df


# --------------------------------------------------------------------------- build
def _lead_arrays(pred: Any) -> Mapping[str, np.ndarray]:
    """Accept a dict lead -> array, a :class:`ecgtrace.stages.base.LeadSignals`, or a lead-column DataFrame."""
    if pred is None:
        return {}
    if hasattr(pred, "signals") and isinstance(pred.signals, Mapping):
        return pred.signals
    if isinstance(pred, pd.DataFrame):
        return {c: pred[c].to_numpy(dtype=np.float64) for c in pred.columns}
    if isinstance(pred, Mapping):
        return pred
    raise EcgTraceError(f"a prediction must be a dict lead -> array (got {type(pred).__name__})")


def build_submission(test_df: pd.DataFrame, predictions: Mapping[Any, Any], missing: str = "zeros") -> pd.DataFrame:
    """Make the ``id,value`` table that ``test_df`` asks for from per-image lead signals.

    Args:
        test_df: ``test.csv`` rows (id, lead, fs, number_of_rows).
        predictions: image id -> {lead: samples in mV} (or a ``LeadSignals``).
            Each lead is fitted to ``number_of_rows`` (:func:`ecgtrace.metric.fit_length`:
            pad/truncate a sample or two, else resample; NaN interpolated), with a warning.
        missing: what to do for an image or lead with no prediction: ``"zeros"``
            (fill with 0 -- it still scores, see the metric) or ``"error"``.
    """
    need = [c for c in ("id", "lead", "number_of_rows") if c not in test_df.columns]
    if need:
        raise EcgTraceError(f"test table lacks column(s) {', '.join(need)}; test.csv has {', '.join(TEST_COLUMNS)}")
    if missing not in ("zeros", "error"):
        raise EcgTraceError(f"missing={missing!r}: use 'zeros' or 'error'")
    preds = {str(k): _lead_arrays(v) for k, v in predictions.items()}
    ids: list[str] = []
    values: list[np.ndarray] = []
    gaps: list[str] = []
    for img, lead, n in zip(test_df["id"].astype(str), test_df["lead"].astype(str), test_df["number_of_rows"]):
        n = int(n)
        arr = preds.get(img, {}).get(lead)
        if arr is None:
            gaps.append(f"{img}/{lead}")
            values.append(np.zeros(n))
        else:
            values.append(fit_length(arr, n, name=f"image {img} lead {lead}"))
        ids.extend(row_ids(img, lead, n))
    if gaps:
        msg = f"no prediction for {len(gaps)} image leads ({', '.join(gaps[:4])}{' ...' if len(gaps) > 4 else ''})"
        if missing == "error":
            raise EcgTraceError(msg + "; predict every image of test.csv or pass missing='zeros'")
        logger.warning(msg + "; filled with zeros")
    unknown = sorted(set(preds) - set(test_df["id"].astype(str)))
    if unknown:
        logger.warning(f"{len(unknown)} predicted images are not in test.csv and were left out ({', '.join(unknown[:4])})")
    return pd.DataFrame({"id": ids, "value": np.concatenate(values) if values else np.zeros(0)})


# --------------------------------------------------------------------------- validate
@dataclass
class ValidationReport:
    """What is wrong with a submission, if anything. ``ok`` is True when it can be scored."""

    n_rows: int
    n_expected: int
    missing: int = 0
    extra: int = 0
    duplicates: int = 0
    malformed: int = 0
    non_numeric: int = 0
    non_finite: int = 0
    missing_columns: list[str] = field(default_factory=list)
    examples: dict[str, list[str]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.extra or self.duplicates or self.malformed or self.non_numeric
                    or self.non_finite or self.missing_columns)

    def problems(self) -> list[str]:
        """One short phrase per problem, with example ids."""
        out = []
        if self.missing_columns:
            out.append(f"missing column(s) {', '.join(self.missing_columns)} (need id,value)")
        for name, what in (("missing", "missing ids"), ("extra", "ids not asked for by test.csv"),
                           ("duplicates", "duplicate ids"), ("malformed", "malformed ids (want {image_id}_{row}_{lead})"),
                           ("non_numeric", "non-numeric values"), ("non_finite", "NaN/inf values")):
            n = getattr(self, name)
            if n:
                ex = self.examples.get(name, [])
                out.append(f"{n} {what}" + (f" (e.g. {', '.join(map(str, ex))})" if ex else ""))
        return out

    def one_line(self) -> str:
        if self.ok:
            return f"submission ok: {self.n_rows:,} rows, all {self.n_expected:,} expected ids, numeric and finite"
        return f"submission invalid: {'; '.join(self.problems())}"

    def summary(self) -> str:
        """A few lines for people: counts, then each problem."""
        lines = [f"rows: {self.n_rows:,}   expected: {self.n_expected:,}   -> {'OK' if self.ok else 'INVALID'}"]
        lines += [f"  - {p}" for p in self.problems()]
        return "\n".join(lines)

    def raise_if_invalid(self, name: str = "submission") -> None:
        if not self.ok:
            raise EcgTraceError(f"{name} is invalid: {'; '.join(self.problems())}; fix it (ecgtrace.submission."
                                f"build_submission fills and fits every lead)")


def _ex(a, k: int = 3) -> list[str]:
    return [str(x) for x in list(a[:k])]


def validate_submission(sub: pd.DataFrame, test_df: pd.DataFrame) -> ValidationReport:
    """Check ``sub`` against ``test_df`` (test.csv rows, or a solution table with id, fs, value).

    Reports missing ids, ids not asked for, duplicates, malformed ids, and
    non-numeric or NaN/inf values; vectorised, so 20 M rows take seconds.
    """
    import pyarrow.compute as pc

    rep = ValidationReport(n_rows=len(sub), n_expected=0)
    rep.missing_columns = [c for c in SUBMISSION_COLUMNS if c not in sub.columns]
    # expected ids as integer keys (image code, lead, row)
    if {"lead", "number_of_rows"} <= set(test_df.columns):
        t_img = test_df["id"].astype(str).to_numpy(dtype=object)
        images = pd.unique(t_img)
        code = pd.Index(images).get_indexer(t_img)
        lead_code = pd.Index(LEADS).get_indexer(test_df["lead"].astype(str))
        if (lead_code < 0).any():
            raise EcgTraceError(f"test table names unknown lead(s) {sorted(set(test_df['lead'][lead_code < 0]))}")
        n = test_df["number_of_rows"].to_numpy(dtype=np.int64)
        exp_il = np.repeat(code * len(LEADS) + lead_code, n)
        exp_row = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)
    else:  # a solution table: its ids are the expected ones
        ps = parse_ids(test_df["id"], what="solution")
        images, exp_il, exp_row = ps.images, ps.image * len(LEADS) + ps.lead, ps.row
    rep.n_expected = int(exp_row.size)
    if rep.missing_columns:
        return rep

    ids = as_arrow_strings(sub["id"].astype(str) if not pd.api.types.is_string_dtype(sub["id"]) else sub["id"])
    good = np.asarray(pc.match_substring_regex(ids, _ID_PATTERN).fill_null(False).to_numpy(zero_copy_only=False))
    sub_ids = sub["id"].to_numpy()
    if not good.all():
        rep.malformed = int((~good).sum())
        rep.examples["malformed"] = _ex(sub_ids[~good])
    well = sub["id"][good] if not good.all() else sub["id"]
    pp = parse_ids(well, images=images)
    max_row = int(max(exp_row.max(initial=0), pp.row.max(initial=0)))
    exp_key = np.sort(exp_il * (max_row + 1) + exp_row)
    unknown = pp.image < 0
    sub_key = (pp.image * len(LEADS) + pp.lead) * (max_row + 1) + pp.row
    order = np.argsort(sub_key, kind="stable")
    sk = sub_key[order]
    dup = np.r_[False, np.diff(sk) == 0] & ~unknown[order]
    if dup.any():
        rep.duplicates = int(dup.sum())
        rep.examples["duplicates"] = _ex(well.to_numpy()[order][dup])
    extra = unknown | ~np.isin(sub_key, exp_key)
    if extra.any():
        rep.extra = int(extra.sum())
        rep.examples["extra"] = _ex(well.to_numpy()[extra])
    present = np.isin(exp_key, sub_key[~unknown])
    if not present.all():
        rep.missing = int((~present).sum())
        mk = exp_key[~present][:3]
        il, row = mk // (max_row + 1), mk % (max_row + 1)
        rep.examples["missing"] = [f"{images[i // len(LEADS)]}_{r}_{LEADS[i % len(LEADS)]}" for i, r in zip(il, row)]
    val = sub["value"]
    num = pd.to_numeric(val, errors="coerce") if not pd.api.types.is_numeric_dtype(val) else val
    nonnum = (num.isna() & val.notna()).to_numpy() if num is not val else np.zeros(len(val), bool)
    if nonnum.any():
        rep.non_numeric = int(nonnum.sum())
        rep.examples["non_numeric"] = _ex(sub_ids[nonnum])
    fin = np.isfinite(num.to_numpy(dtype=np.float64, na_value=np.nan))
    nonfin = ~fin & ~nonnum
    if nonfin.any():
        rep.non_finite = int(nonfin.sum())
        rep.examples["non_finite"] = _ex(sub_ids[nonfin])
    return rep


# --------------------------------------------------------------------------- solutions
@dataclass
class Solution:
    """Truth to score against: ``frame`` (id, fs, value) and, when known, image id -> variant code."""

    frame: pd.DataFrame
    variants: dict[str, str] | None = None
    source: str = ""

    @property
    def image_ids(self) -> list[str]:
        return list(parse_ids(self.frame["id"], what="solution").images)


def _read_variants(path: Path) -> dict[str, str] | None:
    if not path.exists():
        return None
    df = _read_table(path, "variant table")
    if not {"id", "variant"} <= set(df.columns):
        raise EcgTraceError(f"{path} needs columns id, variant")
    return {str(i): str(v).zfill(4) if str(v).isdigit() else str(v) for i, v in zip(df["id"], df["variant"])}


def _check_solution_frame(df: pd.DataFrame, path: Path, fs_from: Path | None) -> pd.DataFrame:
    if "fs" not in df.columns and fs_from is not None and fs_from.exists():
        test = read_test_csv(fs_from)
        fs_of = dict(zip(test["id"].astype(str), test["fs"]))
        img = df["id"].astype(str).str.rsplit("_", n=2).str[0]
        df = df.assign(fs=img.map(fs_of))
    missing = [c for c in ("id", "fs", "value") if c not in df.columns]
    if missing:
        raise EcgTraceError(f"solution {path} lacks column(s) {', '.join(missing)}; a solution has id, fs, value")
    return df


def train_solution(root: str | Path, ids: list[str] | None = None) -> pd.DataFrame:
    """Build a solution (id, fs, value) from a competition-layout train split: each lead's non-NaN window."""
    root = Path(root)
    table = _read_table(root / "train.csv", "train table")
    if not {"id", "fs"} <= set(table.columns):
        raise EcgTraceError(f"{root / 'train.csv'} needs columns id, fs (, sig_len)")
    table["id"] = table["id"].astype(str)
    if ids is not None:
        want = set(map(str, ids))
        table = table[table["id"].isin(want)]
        if table.empty:
            raise EcgTraceError(f"none of the records {sorted(want)[:4]} is in {root / 'train.csv'}")
    parts, absent = [], []
    for rid, fs in zip(table["id"], table["fs"]):
        csv = root / "train" / rid / f"{rid}.csv"
        if not csv.exists():
            absent.append(rid)
            continue
        sig = _read_table(csv, "signal table")
        for lead in LEADS:
            if lead not in sig.columns:
                raise EcgTraceError(f"{csv} lacks lead column {lead}; it needs {','.join(LEADS)}")
            v = sig[lead].to_numpy(dtype=np.float64)
            v = v[np.isfinite(v)]
            parts.append(pd.DataFrame({"id": row_ids(rid, lead, v.size), "fs": fs, "value": v}))
    if absent:
        logger.warning(f"{len(absent)} records of train.csv have no signal CSV and were left out ({', '.join(absent[:4])})")
    if not parts:
        raise EcgTraceError(f"no train/{{id}}/{{id}}.csv signal files under {root}; is it a competition-layout folder?")
    return pd.concat(parts, ignore_index=True)


def load_solution(path_or_dir: str | Path, split: str = "test", ids: list[str] | None = None) -> Solution:
    """The truth to score against.

    ``path_or_dir`` may be a solution file (.csv/.parquet with id, fs, value; a
    ``test_variants.csv`` beside it adds variants), a data-set folder with
    ``test_solution.csv`` (split ``test``), or a competition-layout folder with
    ``train.csv`` + ``train/{id}/{id}.csv`` (split ``train``; ``ids`` limits the records).
    """
    p = Path(path_or_dir)
    if not p.exists():
        raise EcgTraceError(f"truth {p} does not exist; give a solution file or a data-set folder")
    if p.is_file():
        df = _check_solution_frame(_read_table(p, "solution"), p, p.parent / "test.csv")
        return Solution(df, _read_variants(p.parent / "test_variants.csv"), str(p))
    if split == "test":
        for name in ("test_solution.csv", "test_solution.parquet", "solution.csv", "solution.parquet"):
            if (p / name).exists():
                df = _check_solution_frame(_read_table(p / name, "solution"), p / name, p / "test.csv")
                return Solution(df, _read_variants(p / "test_variants.csv"), str(p / name))
        hint = " (it has train.csv: use --split train)" if (p / "train.csv").exists() else ""
        raise EcgTraceError(f"{p} has no test_solution.csv{hint}; give a solution file or a folder made by `ecgtrace synth`")
    if split == "train":
        if not (p / "train.csv").exists():
            raise EcgTraceError(f"{p} has no train.csv; give a competition-layout folder for --split train")
        return Solution(train_solution(p, ids), None, str(p / "train"))
    raise EcgTraceError(f"unknown split {split!r}; use test or train")


_VARIANT_SUFFIX = re.compile(r"^(?P<rid>.+)-(?P<variant>[0-9]{4})$")


def match_solution_to_images(solution: Solution, image_ids: list[str], parsed=None) -> Solution:
    """Fit a solution to the images a submission predicts.

    Images of the train split are named ``{record}-{NNNN}`` (one per variant)
    while the truth is per record: each such image gets a copy of its record's
    truth, and ``NNNN`` becomes its variant. Image ids already in the solution
    are kept as they are. Other images are left alone (scoring reports them).
    ``parsed``: the solution's ids already split by :func:`ecgtrace.metric.parse_ids`.
    """
    sol_imgs = parsed if parsed is not None else parse_ids(solution.frame["id"], what="solution")
    have = set(sol_imgs.images)
    todo = {}
    for img in image_ids:
        m = _VARIANT_SUFFIX.match(str(img))
        if str(img) not in have and m and m["rid"] in have:
            todo[str(img)] = (m["rid"], m["variant"])
    if not todo:
        return solution
    code_of = {im: i for i, im in enumerate(sol_imgs.images)}
    ids = solution.frame["id"].astype(str).to_numpy(dtype=object)
    kept = [solution.frame[np.isin(sol_imgs.image, [code_of[i] for i in image_ids if i in have])]]
    variants = dict(solution.variants or {})
    for img, (rid, var) in todo.items():
        rows = solution.frame[sol_imgs.image == code_of[rid]]
        suffix = [s[len(rid):] for s in ids[sol_imgs.image == code_of[rid]]]
        kept.append(rows.assign(id=[img + s for s in suffix]))
        variants[img] = var
    frame = pd.concat(kept, ignore_index=True)
    return Solution(frame, variants, solution.source)
