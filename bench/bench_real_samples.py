"""Run the whole pipeline over the real ECG pictures in ../shared/real-samples (no ground truth).

What it checks is what a person would: nothing crashes, every picture either gives 12 leads or a
clear one-line reason, and the overlays show traces where the traces are. It writes a montage of
all overlays to look at, and a JSON with per-picture status, orientation, methods and timing.

    PYTHONPATH=src python bench/bench_real_samples.py [--dir ../shared/real-samples] [--limit N] [--checkpoints DIR] [--name NAME]
"""

from __future__ import annotations

import argparse
import json
import time
import traceback
from pathlib import Path

import cv2
import numpy as np
from loguru import logger
from tqdm import tqdm

from ecgtrace import io
from ecgtrace.errors import EcgTraceError
from ecgtrace.pipeline import Pipeline

ROOT = Path(__file__).resolve().parents[1]


def montage(tiles: list[tuple[str, np.ndarray]], cols: int = 6, tile_w: int = 480) -> np.ndarray:
    """Tile thumbnails with their captions."""
    cells = []
    for name, img in tiles:
        h, w = img.shape[:2]
        th = int(round(h * tile_w / w))
        t = cv2.resize(img, (tile_w, th), interpolation=cv2.INTER_AREA)
        t = cv2.copyMakeBorder(t, 24, max(0, 380 - th), 0, 0, cv2.BORDER_CONSTANT, value=(255, 255, 255))[:404]
        cv2.putText(t, name, (4, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
        cells.append(t)
    while len(cells) % cols:
        cells.append(np.full_like(cells[0], 255))
    rows = [np.hstack(cells[i:i + cols]) for i in range(0, len(cells), cols)]
    return np.vstack(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default=str(ROOT.parent / "shared" / "real-samples"))
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    ap.add_argument("--checkpoints", default=None, help="folder of stage{0,1,2}_*.pth (default: classical paths)")
    ap.add_argument("--name", default="real_samples", help="results file stem (<name>.json, <name>_overlays.jpg)")
    args = ap.parse_args()
    logger.remove()
    files = io.list_images([args.dir])
    if args.limit:
        files = files[: args.limit]
    pipe = Pipeline(args.checkpoints)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, tiles = [], []
    for f in tqdm(files, desc="real samples", unit="img"):
        t = time.perf_counter()
        row = {"file": f.name}
        try:
            res = pipe(f)
            row.update(status="ok", orientation=res.report["orientation_name"],
                       methods=res.report["method"], warnings=res.report["warnings"],
                       leads_ok=sum(q == "ok" for q in res.report["lead_quality"].values()))
            tiles.append((f"{f.name} ok {row['leads_ok']}/12 {row['orientation']}", res.overlay()))
        except EcgTraceError as e:  # a clear refusal is an acceptable answer on a real picture
            row.update(status="refused", message=str(e))
            img = cv2.imread(str(f))
            if img is not None:
                tiles.append((f"{f.name} refused", img))
        except Exception as e:  # noqa: BLE001 - a crash is what this bench exists to catch
            row.update(status="crash", message=f"{type(e).__name__}: {e}", trace=traceback.format_exc())
        row["seconds"] = round(time.perf_counter() - t, 2)
        rows.append(row)
    counts = {s: sum(r["status"] == s for r in rows) for s in ("ok", "refused", "crash")}
    secs = [r["seconds"] for r in rows]
    summary = {"n": len(rows), **counts, "median_s": float(np.median(secs)) if secs else None, "pictures": rows}
    summary["checkpoints"] = args.checkpoints
    summary["leads_ok_median"] = float(np.median([r["leads_ok"] for r in rows if r["status"] == "ok"] or [0]))
    (out / f"{args.name}.json").write_text(json.dumps(summary, indent=1))
    if tiles:
        cv2.imwrite(str(out / f"{args.name}_overlays.jpg"), montage(tiles), [cv2.IMWRITE_JPEG_QUALITY, 80])
    print(f"{len(rows)} real pictures: {counts['ok']} digitized, {counts['refused']} refused with a reason, "
          f"{counts['crash']} crashed; median {summary['median_s']:.1f} s/picture; median "
          f"{summary['leads_ok_median']:.1f}/12 leads ok per digitized picture")
    for r in rows:
        if r["status"] != "ok":
            print(f"  {r['file']}: {r['status']}: {r.get('message', '')[:160]}")
    print(f"wrote {out / (args.name + '.json')} and {out / (args.name + '_overlays.jpg')}")


if __name__ == "__main__":
    main()
