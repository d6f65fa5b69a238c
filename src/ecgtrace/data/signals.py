"""12-lead ECG signals for the renderer: synthetic ones, and WFDB records from disk.

Signals travel as ``dict[lead -> (n,) float64 mV]`` over the full record
(10 s at ``fs``), keyed by :data:`ecgtrace.paper.LEADS`.

The default synthesizer is a fast parametric cardiac-dipole model: each beat
is a sum of Gaussian waves (P, Q, R, S, T) whose 3-D direction (left, inferior,
anterior) is projected onto the lead vectors. That gives realistic per-lead
morphology (small r / deep S in V1, R progression across V1..V6, negative aVR)
and exact Einthoven consistency (III = II - I, aVR = -(I+II)/2, aVL = I - II/2,
aVF = II - I/2), and costs a few milliseconds per record. ``method="neurokit2"``
uses ``neurokit2.ecg_simulate(method="multileads")`` instead; it takes about
1 s per 10 s record here and normalises every lead to the same range (aVR comes
out upright), so it is kept only as an option and its limb leads are re-derived
from its I and II.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
from loguru import logger
from scipy.ndimage import gaussian_filter1d
from scipy.signal import resample_poly

from ecgtrace.errors import EcgTraceError
from ecgtrace.paper import DURATION_S, LEADS

#: Sampling rates of the competition data.
FS_CHOICES: tuple[int, ...] = (250, 256, 500, 512, 1000, 1025)

Signals = dict[str, np.ndarray]


def n_samples(fs: float, duration: float = DURATION_S) -> int:
    """Number of samples of a record of ``duration`` seconds at ``fs`` (10 s at 1025 Hz -> 10250)."""
    return int(round(float(fs) * duration))


def derive_limb_leads(i: np.ndarray, ii: np.ndarray) -> Signals:
    """The four limb leads that follow from I and II (Einthoven / Goldberger)."""
    return {"III": ii - i, "aVR": -(i + ii) / 2.0, "aVL": i - ii / 2.0, "aVF": ii - i / 2.0}


# --- parametric dipole model -------------------------------------------------
# Lead vectors in (left, inferior, anterior) coordinates.
_LEAD_I = np.array([1.0, 0.0, 0.0])
_LEAD_II = np.array([0.5, math.sqrt(3) / 2, 0.0])
_PRECORDIAL_ANGLES = np.deg2rad([115.0, 95.0, 75.0, 60.0, 30.0, 0.0])  # 0 = left, 90 = anterior
_PRECORDIAL_GAIN = np.array([1.0, 1.45, 1.5, 1.4, 1.2, 1.0])
_PRECORDIAL = np.stack(
    [np.cos(_PRECORDIAL_ANGLES), np.full(6, 0.12), np.sin(_PRECORDIAL_ANGLES)], axis=1
) * _PRECORDIAL_GAIN[:, None]

# Wave name -> (time offset from R peak s, width s, amplitude mV, direction). The
# T and P offsets are recomputed per beat from RR and PR.
_WAVES: dict[str, tuple[float, float, float, tuple[float, float, float]]] = {
    "P": (-0.15, 0.022, 0.16, (0.55, 0.8, 0.25)),
    "Q": (-0.024, 0.009, 0.25, (-0.5, 0.05, 0.85)),
    "R": (0.0, 0.0105, 1.3, (0.6, 0.75, 0.1)),
    "S": (0.026, 0.011, 0.55, (-0.3, -0.35, -0.85)),
    "T1": (0.27, 0.05, 0.22, (0.5, 0.6, 0.5)),
    "T2": (0.31, 0.033, 0.14, (0.5, 0.6, 0.5)),
}


def _rot(axis: int, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    a, b = [k for k in range(3) if k != axis]
    m = np.eye(3)
    m[a, a], m[a, b], m[b, a], m[b, b] = c, -s, s, c
    return m


def _unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / (np.linalg.norm(v) + 1e-12)


def _beat_times(rng: np.random.Generator, hr: float, duration: float, af: bool) -> tuple[np.ndarray, np.ndarray]:
    """R-peak times (s) from before 0 to past ``duration`` + 1 s, and a flag per beat for ectopic (PVC) beats."""
    rr0 = 60.0 / hr
    resp_f, resp_a = rng.uniform(0.15, 0.35), rng.uniform(0.0, 0.04)
    t = -rng.uniform(0.0, rr0) - 0.5
    times: list[float] = []
    pvc: list[bool] = []
    pvc_rate = float(rng.choice([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.05, 0.15]))
    while t < duration + 1.0:
        times.append(t)
        pvc.append(False)
        if af:
            rr = rr0 * rng.uniform(0.6, 1.4)
        else:
            rr = rr0 * (1.0 + resp_a * math.sin(2 * math.pi * resp_f * t) + 0.015 * rng.standard_normal())
        if rng.random() < pvc_rate:
            # premature ventricular beat at 60 % of the interval, then a compensatory pause
            times.append(t + 0.6 * rr)
            pvc.append(True)
            t += 2.0 * rr
        else:
            t += rr
    return np.asarray(times), np.asarray(pvc, dtype=bool)


def _gauss_sum(t: np.ndarray, centers: np.ndarray, widths: np.ndarray, amps: np.ndarray) -> np.ndarray:
    """sum_b amps[b] * exp(-(t - c_b)^2 / (2 w_b^2)), evaluated only near each centre."""
    out = np.zeros_like(t)
    if len(t) < 2:
        return out
    dt = t[1] - t[0]
    for c, w, a in zip(centers, widths, amps):
        i0 = max(0, int((c - 5 * w - t[0]) / dt))
        i1 = min(len(t), int((c + 5 * w - t[0]) / dt) + 2)
        if i1 > i0:
            tt = t[i0:i1]
            out[i0:i1] += a * np.exp(-0.5 * ((tt - c) / w) ** 2)
    return out


def _wander(rng: np.random.Generator, t: np.ndarray, level: float) -> np.ndarray:
    """Baseline wander: a few slow sinusoids (breathing, electrode motion)."""
    out = np.zeros_like(t)
    for _ in range(3):
        f = rng.uniform(0.05, 0.6)
        out += level * rng.uniform(0.0, 0.12) * np.sin(2 * math.pi * f * t + rng.uniform(0, 2 * math.pi))
    return out


def _parametric(rng: np.random.Generator, fs: float, duration: float, hr: float) -> Signals:
    n = n_samples(fs, duration)
    t = np.arange(n) / float(fs)
    af = rng.random() < 0.08
    beats, pvc = _beat_times(rng, hr, duration, af)
    rr = 60.0 / hr
    # Heart orientation: frontal axis and horizontal rotation vary between people.
    heart = _rot(2, np.deg2rad(rng.normal(0, 18))) @ _rot(1, np.deg2rad(rng.normal(0, 15)))
    pr = rng.uniform(0.12, 0.2)
    qrs_w = rng.choice([1.0, 1.0, 1.0, 1.15, 1.6]) * rng.uniform(0.85, 1.15)
    qt_scale = rng.uniform(0.9, 1.12) * math.sqrt(min(max(rr, 0.45), 1.4))
    amp_global = math.exp(rng.normal(0.0, 0.25))
    t_amp = rng.uniform(0.5, 1.4) * (rng.choice([1.0, 1.0, 1.0, 1.0, -0.6]))  # rare T inversion
    dipole = np.zeros((3, n))
    normal = ~pvc
    for name, (off, w, a, d) in _WAVES.items():
        if name == "P" and af:
            continue
        if name == "P":
            off = -pr + 0.05
        elif name.startswith("T"):
            off = off * qt_scale
            w = w * qt_scale
            a = a * t_amp
        elif name in ("Q", "R", "S"):
            off, w = off * qrs_w, w * qrs_w
        a = a * math.exp(rng.normal(0.0, 0.25))
        d = heart @ _unit(np.asarray(d) + rng.normal(0.0, 0.12, 3))
        cb = beats[normal] + off
        amps = a * (1.0 + 0.03 * rng.standard_normal(len(cb)))
        g = _gauss_sum(t, cb, np.full(len(cb), w), amps)
        dipole += d[:, None] * g[None, :]
    if pvc.any():  # wide ectopic QRS and a discordant T wave
        d_qrs = _unit(rng.normal(0.0, 1.0, 3))
        cb = beats[pvc]
        dipole += d_qrs[:, None] * _gauss_sum(t, cb, np.full(len(cb), 0.035), np.full(len(cb), 1.6))[None]
        dipole -= d_qrs[:, None] * _gauss_sum(t, cb + 0.3 * qt_scale, np.full(len(cb), 0.07), np.full(len(cb), 0.45))[None]
    if af:  # fibrillatory waves replace P waves
        f = rng.uniform(4.0, 8.0)
        fib = 0.04 * np.sin(2 * math.pi * f * t + 0.5 * np.sin(2 * math.pi * 0.3 * t))
        dipole += _unit([0.2, 0.5, 0.8])[:, None] * fib[None]
    dipole *= amp_global

    gain_i = math.exp(rng.normal(0.0, 0.12))
    gain_ii = math.exp(rng.normal(0.0, 0.12))
    gain_v = np.exp(rng.normal(0.0, 0.15, 6))
    noise_level = rng.choice([0.0, 0.002, 0.004, 0.008, 0.015])
    wander_level = rng.choice([0.0, 0.5, 1.0, 2.0])
    powerline = rng.random() < 0.15
    pl_f, pl_a = rng.choice([50.0, 60.0]), rng.uniform(0.005, 0.03)

    def noise() -> np.ndarray:
        # muscle/electrode noise, band-limited to ~40 Hz so it looks the same at every fs
        w = gaussian_filter1d(rng.standard_normal(n), sigma=max(0.5, fs / 250.0))
        x = noise_level * w / (w.std() + 1e-12)
        if powerline and fs > 2 * pl_f:
            x = x + pl_a * np.sin(2 * math.pi * pl_f * t + rng.uniform(0, 2 * math.pi))
        return x

    # Electrode-level wander/noise so the derived limb leads stay consistent.
    ra, la, ll = (_wander(rng, t, wander_level) + noise() for _ in range(3))
    lead_i = gain_i * (_LEAD_I @ dipole) + (la - ra)
    lead_ii = gain_ii * (_LEAD_II @ dipole) + (ll - ra)
    out: Signals = {"I": lead_i, "II": lead_ii}
    out.update(derive_limb_leads(lead_i, lead_ii))
    chest = (_PRECORDIAL @ dipole) * gain_v[:, None]
    for k in range(6):
        out[f"V{k + 1}"] = chest[k] + _wander(rng, t, wander_level) + noise()
    return {lead: out[lead] for lead in LEADS}


def _neurokit(rng: np.random.Generator, fs: float, duration: float, hr: float) -> Signals:
    import neurokit2 as nk

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        df = nk.ecg_simulate(duration=duration, sampling_rate=int(round(fs)), heart_rate=hr, method="multileads",
                             noise=float(rng.uniform(0.0, 0.05)), random_state=int(rng.integers(2**31 - 1)))
    n = n_samples(fs, duration)
    sig = {c: np.asarray(df[c], dtype=np.float64)[:n] for c in df.columns}
    scale = np.exp(rng.normal(0.0, 0.2, 8))
    lead_i, lead_ii = sig["I"] * scale[0], sig["II"] * scale[1]
    out: Signals = {"I": lead_i, "II": lead_ii}
    out.update(derive_limb_leads(lead_i, lead_ii))
    for k in range(6):
        out[f"V{k + 1}"] = sig[f"V{k + 1}"] * scale[2 + k]
    return {lead: out[lead] for lead in LEADS}


def synthesize_ecg(rng: np.random.Generator | int | None = None, fs: float = 500, duration: float = DURATION_S,
                   hr: float | None = None, method: str = "parametric") -> Signals:
    """A random 12-lead ECG in mV, ``duration`` s at ``fs`` Hz.

    Args:
        rng: generator or seed; the same seed gives the same record.
        fs: sampling rate (any positive value; the competition uses :data:`FS_CHOICES`).
        hr: heart rate in bpm; random in 45..130 when ``None``.
        method: ``"parametric"`` (fast dipole model, default) or ``"neurokit2"``.
    """
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    if fs <= 0 or duration <= 0:
        raise EcgTraceError(f"fs and duration must be positive (got fs={fs}, duration={duration})")
    hr = float(rng.uniform(45.0, 130.0)) if hr is None else float(hr)
    if method == "parametric":
        return _parametric(rng, fs, duration, hr)
    if method == "neurokit2":
        try:
            return _neurokit(rng, fs, duration, hr)
        except Exception as e:  # noqa: BLE001 - neurokit2 missing or broken: the parametric model is a full replacement
            logger.warning(f"neurokit2 synthesis failed ({e}); using the parametric model")
            return _parametric(rng, fs, duration, hr)
    raise EcgTraceError(f"unknown synthesis method {method!r}; use 'parametric' or 'neurokit2'")


# --- resampling ------------------------------------------------------------------
def resample(sig: np.ndarray, fs_in: float, fs_out: float) -> np.ndarray:
    """Band-limited resampling (polyphase, anti-aliased) of a 1-D signal from ``fs_in`` to ``fs_out``.

    The output has ``round(len(sig) * fs_out / fs_in)`` samples; NaNs are
    interpolated over first.
    """
    x = np.asarray(sig, dtype=np.float64)
    if fs_in <= 0 or fs_out <= 0:
        raise EcgTraceError(f"sampling rates must be positive (got {fs_in} -> {fs_out})")
    bad = ~np.isfinite(x)
    if bad.all():
        return np.zeros(int(round(len(x) * fs_out / fs_in)))
    if bad.any():
        idx = np.arange(len(x))
        x = x.copy()
        x[bad] = np.interp(idx[bad], idx[~bad], x[~bad])
    if float(fs_in) == float(fs_out):
        return x.copy()
    frac = Fraction(float(fs_out) / float(fs_in)).limit_denominator(2000)
    y = resample_poly(x, frac.numerator, frac.denominator, padtype="line")
    n_out = int(round(len(x) * fs_out / fs_in))
    if len(y) < n_out:
        y = np.pad(y, (0, n_out - len(y)), mode="edge")
    return y[:n_out]


def fit_length(signals: Signals, fs: float, duration: float = DURATION_S) -> Signals:
    """Crop or edge-pad every lead to exactly ``duration`` s at ``fs``."""
    n = n_samples(fs, duration)
    out = {}
    for k, v in signals.items():
        v = np.asarray(v, dtype=np.float64)
        out[k] = v[:n] if len(v) >= n else np.pad(v, (0, n - len(v)), mode="edge" if len(v) else "constant")
    return out


# --- WFDB records ----------------------------------------------------------------
_LEAD_LOOKUP = {lead.lower(): lead for lead in LEADS}


def normalize_lead(name: Any) -> str | None:
    """A lead name as written by some generator (``"AVR"``, ``" v1 "``, ``"-aVR"``...) -> :data:`LEADS` spelling,
    or None when it is no standard lead."""
    s = str(name).strip()
    return _LEAD_LOOKUP.get(s.lower())


@dataclass
class WfdbRecord:
    """One record read from disk: 12 leads in mV at its own ``fs``."""

    name: str
    fs: float
    signals: Signals

    def to_fs(self, fs: float, duration: float = DURATION_S) -> Signals:
        """The record resampled to ``fs`` and cut/padded to ``duration`` s (first ``duration`` s)."""
        n_in = n_samples(self.fs, duration)
        cropped = {k: v[:n_in] for k, v in self.signals.items()}
        return fit_length({k: resample(v, self.fs, fs) for k, v in cropped.items()}, fs, duration)


def find_wfdb_records(folder: str | Path) -> list[Path]:
    """Record paths (without extension) of every ``*.hea`` header under ``folder``, sorted."""
    folder = Path(folder)
    if not folder.exists():
        raise EcgTraceError(f"WFDB folder {folder} does not exist; pass a folder holding .hea/.dat records")
    if not folder.is_dir():
        raise EcgTraceError(f"{folder} is a file, not a folder; pass the folder that holds the .hea/.dat records")
    heads = sorted(folder.rglob("*.hea"))
    if not heads:
        raise EcgTraceError(f"no WFDB records (*.hea) under {folder}; pass a PTB-XL-style folder of .hea/.dat files")
    return [h.with_suffix("") for h in heads]


def read_wfdb_record(path: str | Path) -> WfdbRecord:
    """Read one WFDB record (``path`` without extension) into mV, leads renamed to :data:`LEADS`.

    Lead names are matched case-insensitively (``AVR`` -> ``aVR``). Raises
    :class:`EcgTraceError` when the header or data is unreadable or a lead is missing.
    """
    import wfdb

    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rec = wfdb.rdrecord(str(path), physical=True)
    except Exception as e:
        raise EcgTraceError(f"cannot read WFDB record {path}: {type(e).__name__}: {e}".replace("\n", " ")) from e
    if rec.p_signal is None or rec.fs is None or rec.fs <= 0:
        raise EcgTraceError(f"WFDB record {path} has no physical signal or sampling rate")
    data = np.asarray(rec.p_signal, dtype=np.float64)
    signals = wfdb_leads(rec, data, f"WFDB record {path}")
    if data.shape[0] < 2:
        raise EcgTraceError(f"WFDB record {path} holds no samples")
    return WfdbRecord(name=path.name, fs=float(rec.fs), signals=signals)


def wfdb_leads(rec: Any, data: np.ndarray, what: str) -> Signals:
    """The 12 leads (mV, :data:`LEADS` order) of a read WFDB record whose physical samples are ``data``.

    Lead names are matched case-insensitively (``AVR`` is aVR), other units converted to mV; a
    record without all 12 leads is a one-line error naming ``what``.
    """
    units = [str(u or "mV").strip().lower() for u in (rec.units or ["mV"] * data.shape[1])]
    found: Signals = {}
    for j, name in enumerate(rec.sig_name or []):
        lead = normalize_lead(name)
        if lead is None or lead in found:
            continue
        scale = {"uv": 1e-3, "µv": 1e-3, "v": 1e3}.get(units[j] if j < len(units) else "mv", 1.0)
        found[lead] = data[:, j] * scale
    missing = [lead for lead in LEADS if lead not in found]
    if missing:
        raise EcgTraceError(f"{what} lacks lead(s) {', '.join(missing)} (it has {', '.join(rec.sig_name or [])}); "
                            "the truth needs all 12 leads")
    return {lead: found[lead] for lead in LEADS}


def load_wfdb_folder(folder: str | Path, limit: int | None = None) -> list[WfdbRecord]:
    """Read the WFDB records under ``folder`` (PTB-XL style), skipping broken ones with a warning.

    Raises :class:`EcgTraceError` (one line) when the folder is missing or holds
    no usable record.
    """
    paths = find_wfdb_records(folder)
    records, errors = [], []
    for p in paths:
        try:
            records.append(read_wfdb_record(p))
        except EcgTraceError as e:
            errors.append(str(e))
            logger.warning(f"skipping {e}")
        if limit is not None and len(records) >= limit:
            break
    if not records:
        raise EcgTraceError(f"none of the {len(paths)} WFDB record(s) under {folder} is usable; first problem: {errors[0]}")
    return records
