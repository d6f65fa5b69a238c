"""The competition score (PhysioNet ECG image digitization), plus diagnostics.

The official rule (see ``DESIGN.md``, "the score"), per image and per lead:

1. remove each signal's mean -- only to find the time shift;
2. the shift ``k`` within ``+-int(fs * 0.2)`` samples that maximises the
   cross-correlation ``c[k] = sum_n label_c[n + k] * pred_c[n]``; ties go to
   the smallest ``|k|``, and between ``-k`` and ``+k`` to ``-k`` (the rule scans
   the lags in ascending order and keeps the first of the smallest ``|k|``);
3. shift the (raw, not centred) prediction by ``k``: ``aligned[n] = pred[n - k]``,
   NaN where ``n - k`` falls outside the prediction;
4. the vertical offset ``v`` minimising ``sum (label - (aligned - v))^2`` over
   the samples where ``aligned`` is defined -- a quadratic, so the minimiser is
   ``mean(aligned - label)`` there (we use that closed form; ``tests/test_metric.py``
   checks it against ``scipy.optimize.minimize_scalar`` as the rule states it);
   subtract it;
5. only *then* NaN/inf in the aligned prediction become 0, so the padded samples
   cost ``label^2`` each (the offset is not applied to them);
6. signal power ``sum label^2`` and noise power ``sum (label - aligned)^2``
   (raw label: the mean is not removed from the powers), summed over the 12
   leads of the image; image SNR = ``min(signal / noise, 384)``, 384 when the
   noise is 0, else 0 when the signal is 0;
7. score = ``10 * log10(mean of the linear image SNRs)`` dB, floored at -384.
   Ceiling: ``10 * log10(384) = 25.8433`` dB.

:func:`score` has the official signature and reproduces the published toy
values (25.8433, 13.6291, 13.0576 dB). Like the official scorer it refuses NaN
or inf submission values (a submission writer must fill them; see
:func:`ecgtrace.submission.build_submission`).

Cross-correlation ties are decided as in exact arithmetic: correlations within
``1e-11 * |label| * |pred|`` of the maximum count as tied. (Computed
correlations carry rounding noise of about 1e-16 relative -- from the FFT, and
from centring: ``0.3 - mean([0.3, 0.3, ...])`` is 5.6e-17, not 0. Without the
tolerance a constant prediction, whose correlation is 0 at every lag, would get
a shift chosen by that noise instead of 0; the official code, comparing floats
exactly, does pick such noise-driven shifts there.)

Everything else here -- :func:`score_breakdown`, :func:`snr_for_image`,
per-lead SNRs -- is **diagnostic, not part of the official score**.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping

import numpy as np
import pandas as pd
from loguru import logger

from ecgtrace.errors import EcgTraceError
from ecgtrace.paper import LEADS

MAX_TIME_SHIFT_S = 0.2
PERFECT_SNR = 384.0
CEILING_DB = float(10.0 * np.log10(PERFECT_SNR))  # 25.8433 dB
#: Correlations this close (relative to |label_c| * |pred_c|) to the maximum count as tied.
TIE_RTOL = 1e-11
_LEAD_CODE = {lead: i for i, lead in enumerate(LEADS)}
_CHUNK_SAMPLES = 4_000_000  # samples per vectorised block: bounds the memory of the 2-D gathers


class ScoreError(EcgTraceError):
    """The solution or submission cannot be scored (the competition's ParticipantVisibleError)."""


#: The name the official scorer uses, for notebooks that catch it.
ParticipantVisibleError = ScoreError


def max_shift_samples(fs: float) -> int:
    """Largest time shift the rule searches, in samples: ``int(fs * 0.2)``."""
    return int(fs * MAX_TIME_SHIFT_S)


def snr_from_powers(signal: np.ndarray | float, noise: np.ndarray | float) -> np.ndarray:
    """Linear SNR by the rule: ``min(signal/noise, 384)``; 384 if noise is 0; 0 if signal is 0."""
    s = np.asarray(signal, dtype=np.float64)
    n = np.asarray(noise, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.minimum(s / n, PERFECT_SNR)
    return np.where(n == 0, PERFECT_SNR, np.where(s == 0, 0.0, ratio))


def to_db(snr_linear: np.ndarray | float) -> np.ndarray:
    """10*log10 of a linear SNR, floored at -384 dB like the score (0 -> -384)."""
    with np.errstate(divide="ignore"):
        return np.maximum(10.0 * np.log10(np.asarray(snr_linear, dtype=np.float64)), -PERFECT_SNR)


def mean_score_db(snrs: Iterable[float] | np.ndarray) -> float:
    """Combine linear image SNRs the way the score does: 10*log10 of their mean (floor -384)."""
    vals = np.array([float(getattr(s, "snr", s)) for s in snrs], dtype=np.float64)
    if vals.size == 0:
        raise ScoreError("no images to score; give at least one image")
    return float(to_db(vals.mean()))


# --------------------------------------------------------------------------- core
@dataclass
class SegmentResult:
    """Per-segment (one lead of one image) outcome of alignment; arrays of equal length."""

    signal: np.ndarray  # sum label^2
    noise: np.ndarray  # sum (label - aligned)^2, NaN-padded samples counted as label^2
    shift: np.ndarray  # chosen lag k (aligned[n] = pred[n - k])
    offset: np.ndarray  # vertical offset v subtracted from the aligned prediction


def _lag_order(kmax: int) -> np.ndarray:
    """Lags in tie-break priority: 0, -1, +1, -2, +2, ... (smallest |k| first, then the negative one)."""
    out = np.zeros(2 * kmax + 1, dtype=np.int64)
    out[1::2] = -np.arange(1, kmax + 1)
    out[2::2] = np.arange(1, kmax + 1)
    return out


def _best_shifts(lab: np.ndarray, pred: np.ndarray, kmax: int) -> np.ndarray:
    """Best lag per row of ``lab``/``pred`` (S, L) within ``+-kmax`` (``kmax <= L - 1``)."""
    s, n = lab.shape
    if kmax == 0:
        return np.zeros(s, dtype=np.int64)
    a = lab - lab.mean(axis=1, keepdims=True)
    b = pred - pred.mean(axis=1, keepdims=True)
    lags = _lag_order(kmax)
    if kmax <= 8:  # few lags: direct sliding dot products beat an FFT
        corr = np.empty((s, lags.size))
        for j, k in enumerate(lags):
            if k >= 0:
                corr[:, j] = np.einsum("ij,ij->i", a[:, k:], b[:, : n - k])
            else:
                corr[:, j] = np.einsum("ij,ij->i", a[:, : n + k], b[:, -k:])
    else:
        from scipy import fft as sfft

        nfft = sfft.next_fast_len(2 * n - 1, real=True)
        # circular cross-correlation with enough zero padding is the linear one:
        # irfft(A * conj(B))[k mod nfft] = sum_n a[n + k] b[n]
        full = sfft.irfft(sfft.rfft(a, nfft, axis=1) * np.conj(sfft.rfft(b, nfft, axis=1)), nfft, axis=1)
        corr = full[:, lags % nfft]
    # rounding scale: from the raw values, since centring a constant leaves ~1e-17 residue, not 0
    scale = np.sqrt((lab * lab).sum(axis=1) * (pred * pred).sum(axis=1))
    best = corr.max(axis=1)
    tied = corr >= (best - TIE_RTOL * scale)[:, None]
    return lags[np.argmax(tied, axis=1)]  # first tied lag in priority order


def _align_block(lab: np.ndarray, pred: np.ndarray, kmax: int) -> tuple[np.ndarray, ...]:
    """Score one block of equal-length segments: (signal, noise, shift, offset) arrays."""
    s, n = lab.shape
    shift = _best_shifts(lab, pred, kmax)
    src = np.arange(n)[None, :] - shift[:, None]  # aligned[n] = pred[n - k]
    valid = (src >= 0) & (src < n)
    aligned = np.take_along_axis(pred, np.clip(src, 0, n - 1), axis=1)
    # closed-form minimiser of sum over valid samples of (label - (aligned - v))^2
    diff = np.where(valid, aligned - lab, 0.0)
    offset = diff.sum(axis=1) / valid.sum(axis=1)
    resid = np.where(valid, lab - (aligned - offset[:, None]), lab)  # NaN padding -> 0 after the offset
    return (lab * lab).sum(axis=1), (resid * resid).sum(axis=1), shift, offset


def align_segments(
    values_true: np.ndarray,
    values_pred: np.ndarray,
    starts: np.ndarray,
    lengths: np.ndarray,
    max_shifts: np.ndarray,
) -> SegmentResult:
    """Run steps 1-6 of the rule on many segments at once.

    Segment ``i`` is ``values_*[starts[i] : starts[i] + lengths[i]]`` and may
    shift by up to ``max_shifts[i]`` samples. Both value arrays must be finite.
    Segments of equal (length, max shift) are scored together as 2-D blocks.
    """
    starts = np.asarray(starts, dtype=np.int64)
    lengths = np.asarray(lengths, dtype=np.int64)
    kmaxes = np.minimum(np.asarray(max_shifts, dtype=np.int64), np.maximum(lengths - 1, 0))
    m = starts.size
    out = SegmentResult(np.zeros(m), np.zeros(m), np.zeros(m, dtype=np.int64), np.zeros(m))
    if np.any(lengths <= 0):
        raise ScoreError("a lead has no samples; every lead needs at least one row")
    groups = pd.DataFrame({"L": lengths, "K": kmaxes}).groupby(["L", "K"]).indices
    for (n, kmax), idx in groups.items():
        per = max(1, _CHUNK_SAMPLES // (4 * int(n)))  # the FFT block is ~4x the segment
        for c0 in range(0, idx.size, per):
            sel = idx[c0 : c0 + per]
            pos = starts[sel][:, None] + np.arange(n)[None, :]
            sig, noi, sh, off = _align_block(values_true[pos], values_pred[pos], int(kmax))
            out.signal[sel], out.noise[sel], out.shift[sel], out.offset[sel] = sig, noi, sh, off
    return out


# --------------------------------------------------------------------------- ids
def as_arrow_strings(values: pd.Series):
    """``values`` as one pyarrow string array (arrow-backed columns are not copied)."""
    import pyarrow as pa

    arr = getattr(values.array, "_pa_array", None)  # ArrowExtensionArray / ArrowStringArray
    if arr is None:
        try:
            arr = pa.array(values.to_numpy(dtype=object), type=pa.string())
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            arr = pa.array(values.astype(str).to_numpy(dtype=object), type=pa.string())
    if not pa.types.is_string(arr.type) and not pa.types.is_large_string(arr.type):
        arr = arr.cast(pa.string())
    if isinstance(arr, pa.ChunkedArray):  # one chunk: dictionary codes must share one dictionary
        if arr.nbytes > 1_500_000_000:  # 32-bit string offsets would overflow
            arr = arr.cast(pa.large_string())
        arr = arr.combine_chunks()
    return arr


@dataclass
class ParsedIds:
    """Row ids ``{image_id}_{row}_{lead}`` split into integer codes."""

    image: np.ndarray  # int64 code into ``images``; -1 for an image not in ``images``
    lead: np.ndarray  # int64 index into LEADS
    row: np.ndarray  # int64
    images: np.ndarray  # unique image ids (str), in code order


def parse_ids(ids, images: np.ndarray | None = None, what: str = "submission") -> ParsedIds:
    """Split ids into (image, lead, row) codes, vectorised with pyarrow.

    The image id is everything before the last two underscores, so image ids
    may themselves contain ``_``. With ``images`` given (a solution's image
    list), codes refer to it and unknown images get -1.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    arr = ids if isinstance(ids, (pa.Array, pa.ChunkedArray)) else as_arrow_strings(ids)
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if arr.null_count:
        raise ScoreError(f"{what} has {arr.null_count} empty ids; every row needs an id like 62_0_I")
    parts = pc.split_pattern(arr, "_", max_splits=2, reverse=True)
    nparts = np.asarray(pc.list_value_length(parts).to_numpy(zero_copy_only=False))
    if nparts.size and nparts.min() < 3:
        bad = arr[int(np.argmin(nparts))].as_py()
        raise ScoreError(f"{what} id {bad!r} is not of the form {{image_id}}_{{row}}_{{lead}} (e.g. 62_0_I)")
    img_s, row_s, lead_s = (pc.list_element(parts, k) for k in range(3))
    lead = pc.index_in(lead_s, value_set=pa.array(LEADS))
    if lead.null_count:
        i = int(np.flatnonzero(np.asarray(lead.is_null()))[0])
        raise ScoreError(f"{what} id {arr[i].as_py()!r} names an unknown lead; leads are {', '.join(LEADS)}")
    try:
        row = pc.cast(row_s, pa.int64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        ok = np.asarray(pc.match_substring_regex(row_s, r"^[0-9]+$"))
        i = int(np.flatnonzero(~ok)[0])
        raise ScoreError(f"{what} id {arr[i].as_py()!r} has a non-integer row number") from None
    if images is None:
        enc = pc.dictionary_encode(img_s)
        codes = np.asarray(enc.indices.to_numpy(zero_copy_only=False), dtype=np.int64)
        images = np.asarray(enc.dictionary.to_pylist(), dtype=object)
    else:
        codes_a = pc.index_in(img_s, value_set=pa.array(list(images), type=img_s.type))
        codes = np.asarray(codes_a.fill_null(-1).to_numpy(zero_copy_only=False), dtype=np.int64)
    return ParsedIds(
        image=codes,
        lead=np.asarray(lead.to_numpy(zero_copy_only=False), dtype=np.int64),
        row=np.asarray(row.to_numpy(zero_copy_only=False), dtype=np.int64),
        images=np.asarray(images, dtype=object),
    )


def _numeric_values(df: pd.DataFrame, id_col: str, what: str) -> np.ndarray:
    """The ``value`` column as float64; a clear error for missing/non-numeric/NaN/inf values."""
    if "value" not in df.columns:
        raise ScoreError(f"{what} has no 'value' column (columns: {', '.join(map(str, df.columns))}); "
                         f"write it as {id_col},value")
    col = df["value"]
    if not pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col):
        num = pd.to_numeric(col, errors="coerce")
        bad = num.isna() & col.notna()
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise ScoreError(f"{what} has {int(bad.sum())} non-numeric values (first: id "
                             f"{df[id_col].iloc[i]!r} = {col.iloc[i]!r}); values must be numbers in mV")
        col = num
    vals = col.to_numpy(dtype=np.float64, na_value=np.nan)
    finite = np.isfinite(vals)
    if not finite.all():
        i = int(np.flatnonzero(~finite)[0])
        kind = "NaN" if np.isnan(vals[i]) else "inf"
        raise ScoreError(f"{what} has {int((~finite).sum())} NaN/inf values (first: id {df[id_col].iloc[i]!r} "
                         f"is {kind}); fill them (e.g. with 0) before scoring")
    return vals


def _examples(ids, k: int = 3) -> str:
    ids = list(ids)
    return ", ".join(map(str, ids[:k])) + (" ..." if len(ids) > k else "")


@dataclass
class _Layout:
    """Where each (image, lead) segment of the solution lies once its rows are put in order."""

    order: np.ndarray | None  # solution row order that makes segments contiguous (None: already so)
    starts: np.ndarray  # segment starts in that order
    lengths: np.ndarray
    seg_il: np.ndarray  # image code * 12 + lead code of each segment
    dense: bool  # every segment's rows are exactly 0 .. n-1
    sorted_keys: np.ndarray | None = None  # (il, row) keys in order, when not dense
    max_row: int = 0


def _runs(il: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    starts = np.flatnonzero(np.r_[True, il[1:] != il[:-1]])
    lengths = np.diff(np.r_[starts, il.size])
    rank = np.arange(il.size) - np.repeat(starts, lengths)
    return starts, lengths, rank


def _pick(arr, idx) -> list:
    """A few ids out of an arrow string array (for messages; avoids converting millions of ids)."""
    return arr.take(np.asarray(idx, dtype=np.int64)[:3]).to_pylist()


def _solution_layout(ps: ParsedIds, sol_ids) -> _Layout:
    """Usually a solution is one run per lead with rows 0..n-1 (no sort needed); otherwise sort by (image, lead, row)."""
    il = ps.image * len(LEADS) + ps.lead
    starts, lengths, rank = _runs(il)
    seg_il = il[starts]
    if np.array_equal(ps.row, rank) and np.unique(seg_il).size == seg_il.size:
        return _Layout(None, starts, lengths, seg_il, True)
    max_row = int(ps.row.max(initial=0))
    key = il * (max_row + 1) + ps.row
    order = np.argsort(key, kind="stable")
    ks = key[order]
    dup = np.r_[False, np.diff(ks) == 0]
    if dup.any():
        raise ScoreError(f"solution has {int(dup.sum())} duplicate ids ({_examples(_pick(sol_ids, order[dup]))})")
    starts, lengths, rank = _runs(il[order])
    dense = bool(np.array_equal(ps.row[order], rank))
    return _Layout(order, starts, lengths, il[order][starts], dense, None if dense else ks, max_row)


def _match_submission(lay: _Layout, pp: ParsedIds, n_sol: int, sol_ids, sub_ids) -> np.ndarray:
    """Position of each submission row in the ordered solution; a clear error for missing/extra/duplicate ids."""
    il = pp.image * len(LEADS) + pp.lead
    known = pp.image >= 0
    if lay.dense:  # direct addressing: segment start + row
        seg_of = np.full(int(lay.seg_il.max(initial=0)) + len(LEADS) + 1, -1, dtype=np.int64)
        seg_of[lay.seg_il] = np.arange(lay.seg_il.size)
        seg = np.where(known & (il < seg_of.size), seg_of[np.clip(il, 0, seg_of.size - 1)], -1)
        ok = (seg >= 0) & (pp.row >= 0) & (pp.row < lay.lengths[np.maximum(seg, 0)])
        pos = lay.starts[np.maximum(seg, 0)] + pp.row
    else:
        key = il * (lay.max_row + 1) + pp.row
        pos = np.minimum(np.searchsorted(lay.sorted_keys, key), n_sol - 1)
        ok = known & (pp.row <= lay.max_row) & (lay.sorted_keys[pos] == key)
    pos = np.where(ok, pos, 0)
    counts = np.bincount(pos[ok], minlength=n_sol)
    if ok.all() and len(pos) == n_sol and counts.max(initial=1) == 1:
        return pos
    msgs = []
    dup_rows = ok & (counts[pos] > 1)
    if dup_rows.any():
        n_dup = int((counts[counts > 1] - 1).sum())
        msgs.append(f"{n_dup} duplicate ids ({_examples(pd.unique(np.asarray(sub_ids.take(np.flatnonzero(dup_rows)[:50]).to_pylist(), dtype=object)))})")
    if (counts == 0).any():
        miss = np.flatnonzero(counts == 0)
        rows = lay.order[miss[:3]] if lay.order is not None else miss[:3]
        msgs.append(f"{miss.size} missing ids ({_examples(_pick(sol_ids, rows)) + (' ...' if miss.size > 3 else '')})")
    if (~ok).any():
        msgs.append(f"{int((~ok).sum())} ids not in the solution ({_examples(_pick(sub_ids, np.flatnonzero(~ok))) + (' ...' if (~ok).sum() > 3 else '')})")
    raise ScoreError("submission does not match the solution: " + "; ".join(msgs)
                     + "; write one row per solution id (see `ecgtrace.submission.validate_submission`)")


# --------------------------------------------------------------------------- scoring
@dataclass
class ScoreBreakdown:
    """Diagnostics of one scoring run (NOT part of the official score, except ``score_db``).

    ``per_image``: image_id, fs, signal, noise, snr (linear, the rule's image SNR), snr_db.
    ``per_lead``: image_id, lead, n, shift, offset, signal, noise, snr, snr_db -- a
    per-lead SNR is *not* in the rule (the rule sums powers over the 12 leads); it
    only says which leads lose the most.
    """

    score_db: float
    per_image: pd.DataFrame
    per_lead: pd.DataFrame

    def lead_table(self) -> pd.DataFrame:
        """Per lead, over images: 10*log10(mean linear per-lead SNR), the median dB, mean shift (diagnostic)."""
        g = self.per_lead.groupby("lead", sort=False)
        t = pd.DataFrame({
            "snr_db": g["snr"].mean().map(lambda v: float(to_db(v))),
            "median_db": g["snr_db"].median(),
            "mean_abs_shift": g["shift"].apply(lambda s: float(np.abs(s).mean())),
            "n_images": g.size(),
        })
        return t.reindex([lead for lead in LEADS if lead in t.index])


def _score_frames(solution: pd.DataFrame, submission: pd.DataFrame, id_col: str, *, check_fs: bool = True):
    for df, what in ((solution, "solution"), (submission, "submission")):
        if id_col not in df.columns:
            raise ScoreError(f"'{id_col}' column not found in the {what} (columns: {', '.join(map(str, df.columns))})")
    if "fs" not in solution.columns:
        raise ScoreError("solution has no 'fs' column; it needs id, fs, value")
    if len(solution) == 0:
        raise ScoreError("solution is empty; nothing to score")
    y_true = _numeric_values(solution, id_col, "solution")
    y_pred = _numeric_values(submission, id_col, "submission")
    sol_arr = as_arrow_strings(solution[id_col])
    sub_arr = as_arrow_strings(submission[id_col])
    ps = parse_ids(sol_arr, what="solution")
    lay = _solution_layout(ps, sol_arr)
    n = len(sol_arr)
    truth = y_true if lay.order is None else y_true[lay.order]
    if len(sub_arr) == n and sub_arr.equals(sol_arr):  # same ids in the same order: nothing to match
        pred = y_pred if lay.order is None else y_pred[lay.order]
    else:
        pp = parse_ids(sub_arr, images=ps.images, what="submission")
        pos = _match_submission(lay, pp, n, sol_arr, sub_arr)
        pred = np.empty(n)
        pred[pos] = y_pred

    n_img = len(ps.images)
    fs_rows = pd.to_numeric(solution["fs"], errors="coerce").to_numpy(dtype=np.float64)
    fs_img = np.full(n_img, np.nan)
    fs_img[ps.image] = fs_rows
    if not np.all(np.isfinite(fs_img)) or np.any(fs_rows != fs_img[ps.image]):
        raise ScoreError("sampling frequency (fs) must be one number per image in the solution")
    starts, lengths = lay.starts, lay.lengths
    seg_img, seg_lead = lay.seg_il // len(LEADS), lay.seg_il % len(LEADS)
    per_img_leads = np.bincount(seg_img, minlength=n_img)
    if np.any(per_img_leads != len(LEADS)):
        i = int(np.flatnonzero(per_img_leads != len(LEADS))[0])
        have = {LEADS[j] for j in seg_lead[seg_img == i]}
        raise ScoreError(f"image {ps.images[i]} has {per_img_leads[i]} leads in the solution, missing "
                         f"{', '.join(x for x in LEADS if x not in have)}; each image needs all 12")
    fs_seg = fs_img[seg_img]
    if check_fs:
        ii = seg_lead == _LEAD_CODE["II"]
        bad = fs_seg[ii] != np.floor(lengths[ii] / 10)
        if bad.any():
            j = int(np.flatnonzero(ii)[np.argmax(bad)])
            raise ScoreError(f"image {ps.images[seg_img[j]]}: lead II has {lengths[j]} rows but fs={fs_seg[j]:g}; "
                             f"lead II must hold 10 s (fs*10 rows)")
    res = align_segments(truth, pred, starts, lengths, np.array([max_shift_samples(f) for f in fs_seg]))
    sig_img = np.bincount(seg_img, weights=res.signal, minlength=n_img)
    noi_img = np.bincount(seg_img, weights=res.noise, minlength=n_img)
    snr_img = snr_from_powers(sig_img, noi_img)
    score_db = float(to_db(snr_img.mean()))
    per_image = pd.DataFrame({"image_id": ps.images, "fs": fs_img, "signal": sig_img, "noise": noi_img,
                              "snr": snr_img, "snr_db": to_db(snr_img)})
    lead_snr = snr_from_powers(res.signal, res.noise)
    per_lead = pd.DataFrame({"image_id": ps.images[seg_img], "lead": np.asarray(LEADS, dtype=object)[seg_lead],
                             "n": lengths, "shift": res.shift, "offset": res.offset, "signal": res.signal,
                             "noise": res.noise, "snr": lead_snr, "snr_db": to_db(lead_snr)})
    per_lead = per_lead.sort_values(["image_id", "lead"], key=lambda c: c.map(_LEAD_CODE) if c.name == "lead" else c,
                                    kind="stable", ignore_index=True)
    return ScoreBreakdown(score_db, per_image, per_lead)


def score(solution: pd.DataFrame, submission: pd.DataFrame, row_id_column_name: str) -> float:
    """The official competition score in dB (mean linear image SNR, 10*log10; ceiling 25.8433).

    ``solution``: columns ``row_id_column_name``, ``fs``, ``value``; ``submission``:
    ``row_id_column_name``, ``value``; ids ``{image_id}_{row}_{lead}``. Raises
    :class:`ScoreError` (alias ``ParticipantVisibleError``) for missing, extra or
    duplicate ids, non-numeric or NaN/inf values, or a malformed solution.

    >>> ids = [f"1_{r}_{lead}" for lead in LEADS for r in range(10 if lead == "II" else 3)]
    >>> sol = pd.DataFrame({"id": ids, "fs": 1, "value": np.sin(np.arange(len(ids)))})
    >>> round(score(sol, sol[["id", "value"]], "id"), 4)
    25.8433
    """
    return _score_frames(solution, submission, row_id_column_name).score_db


def score_breakdown(solution: pd.DataFrame, submission: pd.DataFrame, row_id_column_name: str = "id") -> ScoreBreakdown:
    """The official score plus per-image and per-lead diagnostics (not official) -- one pass."""
    return _score_frames(solution, submission, row_id_column_name)


# --------------------------------------------------------------------------- dict-of-arrays helpers
def fit_length(x: np.ndarray, n: int, name: str = "signal", warn: bool = True) -> np.ndarray:
    """Bring a 1-D signal to ``n`` samples.

    Off by a couple of samples (<= max(2, 1 %)): truncate, or pad with the last
    value -- the timing is right, the reader just clipped an edge. Otherwise the
    signal was read at another rate: resample linearly over the same duration.
    Non-finite samples are first filled by linear interpolation (0 when none is
    finite), because the score refuses NaN. Warns when it changes anything.
    """
    x = np.asarray(x, dtype=np.float64).ravel()
    fin = np.isfinite(x)
    if not fin.all():
        if warn:
            logger.warning(f"{name}: {int((~fin).sum())} of {x.size} samples are NaN/inf; interpolated")
        x = np.interp(np.arange(x.size), np.flatnonzero(fin), x[fin]) if fin.any() else np.zeros(x.size)
    if x.size == n:
        return x
    if warn:
        logger.warning(f"{name}: {x.size} samples where {n} are expected; "
                       + ("padded/truncated" if abs(x.size - n) <= max(2, n // 100) else "resampled"))
    if x.size == 0:
        return np.zeros(n)
    if abs(x.size - n) <= max(2, n // 100):
        return x[:n] if x.size > n else np.r_[x, np.full(n - x.size, x[-1])]
    return np.interp(np.linspace(0.0, 1.0, n, endpoint=False) * x.size, np.arange(x.size), x)


@dataclass
class ImageScore:
    """Diagnostic score of one image scored from dicts of arrays (the rule's image SNR, per-lead extras)."""

    snr: float  # linear image SNR by the rule (over the leads scored)
    lead_snr: dict[str, float] = field(default_factory=dict)  # per lead, linear, diagnostic
    shift: dict[str, int] = field(default_factory=dict)
    offset: dict[str, float] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)  # leads scored as all-zero predictions

    @property
    def db(self) -> float:
        return float(to_db(self.snr))

    @property
    def lead_db(self) -> dict[str, float]:
        return {k: float(to_db(v)) for k, v in self.lead_snr.items()}


def truth_from_frame(signals: pd.DataFrame) -> dict[str, np.ndarray]:
    """Competition-style signal table (12 lead columns, NaN outside each window) -> lead -> window samples."""
    out = {}
    for lead in LEADS:
        if lead in signals.columns:
            v = signals[lead].to_numpy(dtype=np.float64)
            v = v[np.isfinite(v)]
            if v.size:
                out[lead] = v
    return out


def snr_for_image(truth: Mapping[str, np.ndarray], pred: Mapping[str, np.ndarray], fs: float) -> ImageScore:
    """Score one image given as dicts lead -> samples (diagnostic helper for benches).

    ``truth[lead]``: the lead's true samples (NaNs, e.g. outside the window of a
    competition-style full-length column, are dropped; a ``pred`` of that same
    full length is cut at the same positions). ``pred[lead]`` is fitted to the
    truth length with :func:`fit_length` (a warning when it differs); a missing
    lead scores as zeros, as a submission writer would fill it. Only the leads
    in ``truth`` count; with all 12 this is exactly the rule's image SNR.
    """
    labels, preds, names, missing = [], [], [], []
    for lead in [x for x in LEADS if x in truth] + [x for x in truth if x not in LEADS]:
        t = np.asarray(truth[lead], dtype=np.float64).ravel()
        keep = np.isfinite(t)
        t = t[keep]
        if t.size == 0:
            continue
        if lead in pred and pred[lead] is not None:
            p = np.asarray(pred[lead], dtype=np.float64).ravel()
            if p.size == keep.size and not keep.all():
                p = p[keep]
            p = fit_length(p, t.size, name=f"prediction {lead}")
        else:
            missing.append(lead)
            p = np.zeros(t.size)
        labels.append(t)
        preds.append(p)
        names.append(lead)
    if not names:
        raise ScoreError("truth has no samples for any lead; nothing to score")
    lengths = np.array([x.size for x in labels])
    starts = np.r_[0, np.cumsum(lengths)[:-1]]
    res = align_segments(np.concatenate(labels), np.concatenate(preds), starts, lengths,
                         np.full(len(names), max_shift_samples(fs)))
    snr = float(snr_from_powers(res.signal.sum(), res.noise.sum()))
    lead_snr = snr_from_powers(res.signal, res.noise)
    return ImageScore(
        snr=snr,
        lead_snr={k: float(v) for k, v in zip(names, lead_snr)},
        shift={k: int(v) for k, v in zip(names, res.shift)},
        offset={k: float(v) for k, v in zip(names, res.offset)},
        missing=missing,
    )
