"""The work behind ``ecgtrace serve``, without the web framework: one job per uploaded picture.

A :class:`JobStore` owns a temporary folder; each upload gets a sub-folder with the picture
(removed once read) and the same outputs ``ecgtrace digitize`` writes (CSV, WFDB, JSON,
overlay). Jobs expire after ``ttl_s`` or beyond the newest ``keep``; :meth:`JobStore.close`
removes the whole folder. One page runs through the pipeline at a time: stages may hold
torch models and the CPU is the bottleneck anyway, so a second upload waits its turn.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
import uuid
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from loguru import logger

from ecgtrace import io, paper
from ecgtrace.errors import EcgTraceError, StageError
from ecgtrace.pipeline import Pipeline, Result

#: Download kinds -> (file name in the job folder, suffix of the name offered to the browser).
DOWNLOADS = {
    "overlay.png": ("overlay.png", "_overlay.png"),
    "signals.csv": ("signals.csv", ".csv"),
    "record.zip": ("record.zip", "_wfdb.zip"),
    "report.json": ("report.json", ".json"),
}


class UploadError(EcgTraceError):
    """An upload the server refuses; ``status`` is the HTTP status (4xx) to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Job:
    """One digitized picture: its outputs in ``folder`` and when it was made."""

    id: str
    name: str
    filename: str
    folder: Path
    created: float = field(default_factory=time.time)

    def path(self, kind: str) -> Path:
        """The file of a download kind (a key of :data:`DOWNLOADS`)."""
        return self.folder / DOWNLOADS[kind][0]

    def download_name(self, kind: str) -> str:
        """The file name offered to the browser, e.g. ``page1.csv``."""
        return self.name + DOWNLOADS[kind][1]


@dataclass
class Digitized:
    """What :meth:`JobStore.digitize` returns: the job, the pipeline's result and the seconds spent."""

    job: Job
    result: Result
    pipeline_s: float  # inside the pipeline (sum of its stage timers)
    total_s: float  # picture bytes -> outputs written


def safe_name(filename: str) -> str:
    """A file-safe stem of an uploaded file name (WFDB record names allow letters, digits, _ and -)."""
    stem = Path(filename.replace("\\", "/")).stem
    return "".join(c if c.isalnum() or c in "_-" else "_" for c in stem)[:80] or "ecg"


def lead_windows(result: Result, decimals: int = 4) -> dict[str, dict[str, Any]]:
    """Each lead's own window as ``{"start_s": t0, "values": [mV, ...]}`` (JSON-ready; NaN -> None).

    The table holds NaN outside each window; sending only the window keeps the answer small
    (~19k numbers at 500 Hz) and tells the page where each lead sits in the 10 s.
    """
    out = {}
    t = result.signals.index.to_numpy(dtype=np.float64)
    for lead in paper.LEADS:
        v = result.signals[lead].to_numpy(dtype=np.float64)
        fin = np.flatnonzero(np.isfinite(v))
        if fin.size == 0:
            out[lead] = {"start_s": None, "values": []}
            continue
        w = np.round(v[fin[0]:fin[-1] + 1], decimals)
        out[lead] = {"start_s": round(float(t[fin[0]]), 6),
                     "values": [None if not np.isfinite(x) else float(x) for x in w]}
    return out


class JobStore:
    """A temporary folder of jobs and the pipeline that fills it (thread-safe)."""

    def __init__(self, pipeline: Pipeline, parent: str | Path | None = None, keep: int = 100,
                 ttl_s: float = 3600.0) -> None:
        self.pipeline = pipeline
        self.root = Path(tempfile.mkdtemp(prefix="ecgtrace-serve-", dir=parent))
        self.keep = int(keep)
        self.ttl_s = float(ttl_s)
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._jobs_lock = threading.Lock()
        self._run_lock = threading.Lock()  # one page through the pipeline at a time
        logger.debug(f"serve: work folder {self.root}")

    # -- jobs ---------------------------------------------------------------------------------
    def get(self, job_id: str) -> Job | None:
        """The job with this id, or None when unknown or expired."""
        self.prune()
        with self._jobs_lock:
            return self._jobs.get(job_id)

    def __len__(self) -> int:
        with self._jobs_lock:
            return len(self._jobs)

    def prune(self) -> None:
        """Drop jobs older than ``ttl_s`` and all but the newest ``keep`` (their folders too)."""
        now = time.time()
        with self._jobs_lock:
            stale = [j for j in self._jobs.values() if now - j.created > self.ttl_s]
            extra = len(self._jobs) - len(stale) - self.keep
            if extra > 0:
                stale += [j for j in self._jobs.values() if j not in stale][:extra]
            for j in stale:
                self._jobs.pop(j.id, None)
        for j in stale:
            shutil.rmtree(j.folder, ignore_errors=True)

    def close(self) -> None:
        """Remove the work folder and forget every job."""
        with self._jobs_lock:
            self._jobs.clear()
        shutil.rmtree(self.root, ignore_errors=True)

    # -- work ---------------------------------------------------------------------------------
    def digitize(self, data: bytes, filename: str, fs: float = 500.0) -> Digitized:
        """Read the picture in ``data``, run the pipeline and write the outputs.

        Raises :class:`UploadError` with a 4xx status and a one-line message for an empty,
        unreadable or unusable picture and for a page the pipeline refuses.
        """
        t0 = time.perf_counter()
        filename = filename or "upload"
        if not data:
            raise UploadError(400, f"{filename}: the upload is empty (0 bytes); choose the picture again")
        job_id = uuid.uuid4().hex
        job = Job(id=job_id, name=safe_name(filename), filename=filename, folder=self.root / job_id)
        job.folder.mkdir()
        try:
            picture = job.folder / ("upload" + Path(filename).suffix.lower()[:8])
            picture.write_bytes(data)
            try:
                image = io.read_image(picture)
            except EcgTraceError as e:
                # name the user's file, not our temporary path; a decodable but unusable picture is 422
                raise UploadError(422 if isinstance(e, StageError) else 415,
                                  str(e).replace(str(picture), filename)) from None
            finally:
                picture.unlink(missing_ok=True)
            with self._run_lock:
                try:
                    result = self.pipeline(image, fs=fs, name=job.name)
                except EcgTraceError as e:
                    raise UploadError(422, f"{filename}: {e}") from None
            pipeline_s = float(sum(result.report["timing_s"].values()))
            result.report["source"] = filename
            self._write_outputs(job, result)
        except BaseException:
            shutil.rmtree(job.folder, ignore_errors=True)
            raise
        with self._jobs_lock:
            self._jobs[job.id] = job
        self.prune()
        return Digitized(job=job, result=result, pipeline_s=pipeline_s, total_s=time.perf_counter() - t0)

    @staticmethod
    def _write_outputs(job: Job, result: Result) -> None:
        result.to_csv(job.path("signals.csv"))
        result.overlay(job.path("overlay.png"))
        result.to_json(job.path("report.json"))
        # a WFDB record is two files (.hea + .dat): offered as one zip
        wfdb_dir = job.folder / "wfdb"
        hea = result.to_wfdb(wfdb_dir, job.name)
        with io.atomic_write(job.path("record.zip")) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
            for f in (hea, hea.with_suffix(".dat")):
                z.write(f, f.name)
        shutil.rmtree(wfdb_dir, ignore_errors=True)
