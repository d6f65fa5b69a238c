"""``ecgtrace predict``: digitize a competition-layout test split into a submission (``id,value``)."""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ecgtrace.commands.digitize import add_engine_options, check_engine_options
from ecgtrace.commands.models import add_weights_options
from ecgtrace.errors import EcgTraceError


def register(subparsers) -> None:
    """Add the ``predict`` subcommand."""
    p = subparsers.add_parser(
        "predict",
        help="digitize a test split (test.csv + test/{id}.png) into a submission file",
        description="Read DATA/test.csv (id, lead, fs, number_of_rows) and the pictures DATA/{split}/{id}.png, "
                    "digitize each one, and write a submission (id,value; .csv or .parquet) that `ecgtrace "
                    "evaluate --pred FILE --truth DATA` scores. A picture that fails is reported and predicted "
                    "as zeros (it still counts in the score).",
    )
    p.add_argument("--data", required=True, help="data-set folder holding test.csv and the test/ pictures")
    p.add_argument("--split", default="test", help="split name: reads {split}.csv and {split}/{id}.png (default test)")
    p.add_argument("--output", "-o", default="submission.csv", help="submission file, .csv or .parquet "
                                                                    "(default submission.csv)")
    add_weights_options(p)
    p.add_argument("--device", default="cpu", help="torch device for the models (default cpu)")
    add_engine_options(p)
    p.add_argument("--einthoven", action="store_true", help="apply a soft Einthoven correction to the limb leads")
    p.add_argument("--limit", type=int, default=0, help="only the first N images (0 = all)")
    p.set_defaults(func=run)


@dataclass
class PredictOutcome:
    submission: pd.DataFrame
    n_images: int
    failed: dict[str, str] = field(default_factory=dict)
    reports: dict[str, dict] = field(default_factory=dict)
    seconds: float = 0.0


def _find_image(folder: Path, image_id: str) -> Path | None:
    for suf in (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"):
        p = folder / f"{image_id}{suf}"
        if p.exists():
            return p
    return None


def predict_image(pipe, job: tuple[str, Path, float, dict[str, int]]) -> tuple[dict[str, np.ndarray], dict]:
    """One image of the split (in a worker process, or in this one): its lead signals and report."""
    image_id, path, fs, n_samples = job
    res = pipe(path, fs=fs, name=image_id, n_samples=n_samples)
    return res.leads.signals, res.report


def ship_image(job: tuple[str, Path, float, dict[str, int]]):
    """On the driver (``--engine ray``): the job with its picture's bytes."""
    from ecgtrace.batch_ray import ship_picture

    return ship_picture(job, job[1])


def predict_shipped(pipe, shipped) -> tuple[dict[str, np.ndarray], dict]:
    """On a Ray worker: :func:`predict_image` on a shipped picture."""
    from ecgtrace.batch_ray import unpacked

    image_id, _path, fs, n_samples = shipped.task
    with unpacked(shipped) as local:
        return predict_image(pipe, (image_id, local, fs, n_samples))


def predict_split(data: str | Path, split: str = "test", checkpoints: str | Path | None = None,
                  device: str = "cpu", einthoven: bool = False, limit: int = 0, progress: bool = True,
                  classical: bool = False, backend: str = "torch",
                  workers: int | None = None, engine: str = "local", ray_address: str | None = None,
                  batch_size: int | None = None) -> PredictOutcome:
    """Digitize every image listed in ``DATA/{split}.csv``; returns the submission table and per-image reports.

    ``workers`` > 1 digitizes that many images at a time in worker processes (:func:`ecgtrace.batch.run_pool`);
    ``engine="ray"`` on the workers of a Ray cluster (:func:`ecgtrace.batch_ray.run_ray`: ``workers`` Ray
    workers, default one per CPU, ``batch_size`` pictures per Ray task, ``ray_address``). The submission is
    the same.

    Weights per stage: ``checkpoints``, else the shipped ones, else classical; ``classical=True`` forces classical;
    ``backend`` runs the networks with torch or onnxruntime.
    """
    from tqdm import tqdm

    from ecgtrace.batch import build_pipeline, run_pool
    from ecgtrace.submission import build_submission, read_test_csv

    data = Path(data)
    table = data / f"{split}.csv"
    if not table.exists():
        raise EcgTraceError(f"{table} not found; --data must be a folder with {split}.csv and {split}/ "
                            "(make one with `ecgtrace synth --out DIR --n-test 10`)")
    test_df = read_test_csv(table)
    ids = list(dict.fromkeys(test_df["id"].astype(str)))
    if limit > 0:
        ids = ids[:limit]
        test_df = test_df[test_df["id"].astype(str).isin(ids)].reset_index(drop=True)
    preds: dict[str, dict[str, np.ndarray]] = {}
    out = PredictOutcome(submission=pd.DataFrame(), n_images=len(ids))
    t0 = time.time()
    jobs, failed = [], {}
    for image_id in ids:
        rows = test_df[test_df["id"].astype(str) == image_id]
        path = _find_image(data / split, image_id)
        if path is None:
            failed[image_id] = f"no picture {data / split / image_id}.png"
            tqdm.write(f"skipped {image_id}: {failed[image_id]}", file=sys.stderr)
            continue
        n_samples = {str(lead): int(n) for lead, n in zip(rows["lead"], rows["number_of_rows"])}
        jobs.append((image_id, path, float(rows["fs"].iloc[0]), n_samples))
    bar = tqdm(total=len(jobs), desc="predicting", unit="img", disable=not progress)
    pipe_kwargs = {"device": device, "einthoven": einthoven, "classical": classical, "backend": backend}
    if engine == "ray":
        from ecgtrace.batch_ray import run_ray

        outcomes = run_ray(jobs, predict_shipped, build_pipeline, (checkpoints, pipe_kwargs), workers=workers,
                           batch_size=batch_size, address=ray_address, pack=ship_image)
    elif engine == "local":
        outcomes = run_pool(jobs, predict_image, build_pipeline, (checkpoints, pipe_kwargs), workers=workers or 1)
    else:
        raise EcgTraceError(f"engine must be local or ray, got {engine!r}")
    for i, outcome in outcomes:
        bar.update()
        image_id = jobs[i][0]
        if outcome.ok:
            preds[image_id], out.reports[image_id] = outcome.value
        else:  # a failed image is predicted as zeros, never stops the run
            failed[image_id] = outcome.error
            tqdm.write(f"skipped {image_id}: {outcome.error}", file=sys.stderr)
    bar.close()
    out.failed = {i: failed[i] for i in ids if i in failed}  # in the order of the split
    out.reports = {i: out.reports[i] for i in ids if i in out.reports}
    out.submission = build_submission(test_df, preds, missing="zeros")
    out.seconds = time.time() - t0
    return out


def run(args: argparse.Namespace) -> int:
    """Predict, validate and write the submission."""
    from ecgtrace.submission import read_test_csv, validate_submission, write_submission

    check_engine_options(args)
    outcome = predict_split(args.data, args.split, args.checkpoints, args.device, args.einthoven, args.limit,
                            classical=args.classical, backend=args.backend, workers=args.workers, engine=args.engine,
                            ray_address=args.ray_address, batch_size=args.batch_size)
    test_df = read_test_csv(Path(args.data) / f"{args.split}.csv")
    if args.limit > 0:
        keep = list(dict.fromkeys(test_df["id"].astype(str)))[: args.limit]
        test_df = test_df[test_df["id"].astype(str).isin(keep)]
    rep = validate_submission(outcome.submission, test_df)
    rep.raise_if_invalid("submission")
    path = write_submission(outcome.submission, args.output)
    ok = outcome.n_images - len(outcome.failed)
    print(f"predicted {ok} of {outcome.n_images} image(s) in {outcome.seconds:.1f} s "
          f"({outcome.seconds / max(1, outcome.n_images):.2f} s/image); {len(outcome.submission)} rows -> {path}")
    for image_id, msg in outcome.failed.items():
        print(f"  FAILED {image_id} (predicted as zeros): {msg.splitlines()[0] if msg else 'error'}")
    print(f"score it with: ecgtrace evaluate --pred {path} --truth {args.data}")
    return 0 if ok else 1
