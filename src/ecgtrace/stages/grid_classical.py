"""Classical stage-1 grid detection: find the 5 mm lattice points from the grid's own periodicity.

No trained weights. Works on stage 0's output, a page already close to the canonical
geometry of :mod:`ecgtrace.paper`, so every 5 mm node ``(i, j)`` starts near its
canonical position ``(vline_x(j), hline_y(i))``; that is also how nodes get their
indices (the lattice phase nearest the canonical one).

1. A grid-line feature image: colour saturation (red/pink/blue/green grids; dark ink, i.e. the
   trace and text, is masked out) or darkness (grey / black-and-white grids, trace clipped),
   high-passed to remove shading; the one with the stronger 5 mm periodicity is used. A ridge
   filter (above both neighbours) then keeps thin lines and drops steps such as the paper edge.
2. Periodicity test: the power at the 5 mm frequency in band-wise projections. A page
   without it (blank, a photo that is not an ECG, a "none"-grid page) is reported, not warped.
3. Node measurement: around each predicted node a patch is sampled along the local
   lattice axes; the column/row profiles of the patch peak at the major (5 mm) lines. The
   peak is chosen on the profiles summed over the node's lattice neighbours (a trace baseline
   or a text line is not periodic), then refined on the node's own profile (3-sample centroid);
   nodes with ink right along their line are left to the lattice interpolation.
4. Growth: nodes near the page centre are measured first; the lattice fitted to them
   (:func:`ecgtrace.stages.lattice.fit_lattice`) predicts the next ring, so that
   perspective and curl that drift by more than half a box over the page are followed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from ecgtrace.paper import CANONICAL, Page
from ecgtrace.stages import lattice as L
from ecgtrace.stages.steps import step
from ecgtrace.stages.trace.ink import blur_coarse, channel_max_min, whiten_paper


@dataclass
class GridDetection:
    """Detected 5 mm nodes with their lattice indices, plus diagnostics.

    ``points`` (N, 2) input px, ``index`` (N, 2) int (hline i from the top, vline j from the left),
    ``strength`` (N,) peak contrast of each node (robust z-score, min of its two lines).
    """

    points: np.ndarray
    index: np.ndarray
    strength: np.ndarray
    feature: str = ""  # "colour" or "dark"
    periodicity: float = 0.0  # 5 mm spectral peak over its neighbourhood (>= ~4 means a grid)
    ok: bool = True
    message: str = ""
    fit: L.LatticeFit | None = None
    extra: dict = field(default_factory=dict)


# -- feature image --------------------------------------------------------------------
def _highpass(a: np.ndarray, sigma: float) -> np.ndarray:
    """Thin bright structures minus the local background (shading, stains), clipped at 0."""
    bg = cv2.GaussianBlur(a, (0, 0), sigma)
    return np.clip(a - bg, 0, None)


#: Paper whose median colour spans more than this (0..255) between its channels is tinted (orange, blue...).
PAPER_TINT = 25.0


def grid_features(image_bgr: np.ndarray, page: Page = CANONICAL) -> dict[str, np.ndarray]:
    """Candidate grid-line feature images (float32, grid lines bright), keyed by name."""
    src = image_bgr if image_bgr.ndim == 3 else cv2.cvtColor(image_bgr, cv2.COLOR_GRAY2BGR)
    src = src[..., :3]
    img = src.astype(np.float32)
    paper_bgr = np.median(img[::8, ::8].reshape(-1, 3), axis=0)
    if float(paper_bgr.max() - paper_bgr.min()) > PAPER_TINT:
        # judged against the paper's own colour: on orange or blue paper the paper is as saturated as a
        # red grid, and only relative to it does the grid stand out. (Not on white paper: whitening there
        # lost the lattice of a black grid with a bold trace, 14.3 -> -0.6 dB on one bench page.)
        # (coarse: the paper colour blurred at a lower resolution, 1e-3 of 255 off OpenCV's own blur: 0.15 s a
        # page instead of 1.0-1.6; ECG-Image-Kit's aug pages within 0.004 dB, our own pages unchanged)
        with step("whiten"):
            img = 255.0 * np.minimum(whiten_paper(src, kernel_px=max(3, int(round(0.25 * L.pitch_px(page))) | 1),
                                                  coarse=True), 1.0)
    sigma = max(2.0, 0.25 * L.pitch_px(page))
    maxc, minc = channel_max_min(img)
    chroma = maxc - minc
    dark = 255.0 - (img[..., 0] + img[..., 1] + img[..., 2]) / 3.0  # img.mean(axis=2), summed in the same order
    feats = {}
    with step("highpass"):
        c = _highpass(chroma, sigma)
    # Ink (trace, text) is dark; coloured grid lines are not. Blank the ink and a 2 px rim (blurred ink
    # edges pick up the paper's colour) so a flat trace baseline next to a grid line cannot pull it.
    with step("paper level"):  # (at a lower resolution: 0.02 s instead of 0.15, a 1e-3 change of a half-level test)
        paper = blur_coarse(maxc, 2.0 * L.pitch_px(page))
    ink = (maxc < 0.5 * paper).astype(np.uint8)
    rim = max(1, int(round(0.05 * L.pitch_px(page))))
    ink = cv2.dilate(ink, np.ones((2 * rim + 1, 2 * rim + 1), np.uint8))
    c[ink > 0] = 0.0
    feats["colour"] = c
    feats["colour_valid"] = (ink == 0).astype(np.float32)
    with step("highpass"):
        d = _highpass(dark, sigma)
    # The trace is darker than any grid line: clip so it weighs no more than a grid pixel.
    pos = d[d > 4.0]
    if pos.size:
        d = np.minimum(d, np.percentile(pos, 90))
    feats["dark"] = d
    return feats


def ridge_features(feat: np.ndarray, pitch: float) -> tuple[np.ndarray, np.ndarray]:
    """Line-only responses across x (vertical lines) and across y (horizontal lines).

    ``min(f(x) - f(x - d), f(x) - f(x + d))``: a thin line stands above both sides, a step (the
    paper edge against the background, a shadow border) above one side only and so gives nothing.
    """
    d = max(2, int(round(0.07 * pitch)))
    f = np.pad(feat, d, mode="edge")
    c = f[d:-d, d:-d]
    rv = np.minimum(c - f[d:-d, :-2 * d], c - f[d:-d, 2 * d:])
    rh = np.minimum(c - f[:-2 * d, d:-d], c - f[2 * d:, d:-d])
    return np.clip(rv, 0, None).astype(np.float32), np.clip(rh, 0, None).astype(np.float32)


def periodicity(feat: np.ndarray, pitch: float, n_bands: int = 8) -> float:
    """How strongly ``feat`` repeats every ``pitch`` px in x and in y (min of the two).

    Band-wise projections (so a small rotation does not blur them), power spectra summed
    over bands; score = power at the 5 mm frequency / median power of nearby frequencies.
    """
    scores = []
    for axis in (0, 1):  # 0: project columns (vertical lines), 1: rows
        a = feat if axis == 0 else feat.T
        h, w = a.shape
        n = 1 << int(np.ceil(np.log2(max(w, 8))))
        power = np.zeros(n // 2 + 1)
        for band in np.array_split(np.arange(h), n_bands):
            prof = a[band].mean(axis=0)
            prof = (prof - prof.mean()) * np.hanning(w)
            power += np.abs(np.fft.rfft(prof, n)) ** 2
        f = np.fft.rfftfreq(n)
        f0 = 1.0 / pitch
        peak = power[(f > 0.85 * f0) & (f < 1.15 * f0)]
        ref = power[(f > 0.4 * f0) & (f < 1.8 * f0) & ~((f > 0.8 * f0) & (f < 1.2 * f0))]
        if peak.size == 0 or ref.size == 0:
            return 0.0
        scores.append(float(peak.max() / (np.median(ref) + 1e-9)))
    return min(scores)


# -- node measurement ----------------------------------------------------------------
def _local_axes(pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per node, lattice axis vectors (input px per lattice step) along j (x) and i (y)."""
    ex = np.gradient(pred, axis=1)
    ey = np.gradient(pred, axis=0)
    return ex, ey


def _row_median(a: np.ndarray) -> np.ndarray:
    """``np.median(a, axis=-1, keepdims=True)`` of finite rows: for an odd row length (a node profile's always is)
    the middle element of one partition, the same number five times faster."""
    n = a.shape[-1]
    if n % 2 == 0:
        return np.median(a, axis=-1, keepdims=True)
    return np.partition(a, n // 2, axis=-1)[..., n // 2:n // 2 + 1]


def _robust_z(prof: np.ndarray) -> np.ndarray:
    """Each row of ``prof`` as a robust z-score (median 0, MAD 1), clipped so one blot cannot dominate."""
    med = _row_median(prof)
    mad = _row_median(np.abs(prof - med))
    scale = 1.4826 * mad + 1e-3 * (np.abs(med) + 1.0)
    return np.clip((prof - med) / scale, -5.0, 30.0)


def _neighbour_sum(z: np.ndarray, valid: np.ndarray, radius: int = 2, sigma: float = 1.2) -> np.ndarray:
    """Gaussian-weighted sum of the node profiles (nh, nv, n) over each node's lattice neighbours.

    The Gaussian is separable: along the columns, then along the rows (10 shifted sums instead of 25,
    a third of the time; the same sums to float rounding)."""
    nh, nv, n = z.shape
    zz = np.where(valid[..., None], z, 0.0)
    pad = np.pad(zz, ((radius, radius), (radius, radius), (0, 0)))
    g = np.exp(-np.arange(-radius, radius + 1) ** 2 / (2 * sigma * sigma))
    across = np.zeros((nh + 2 * radius, nv, n))
    for k in range(2 * radius + 1):
        across += g[k] * pad[:, k:k + nv]
    out = np.zeros_like(zz)
    for k in range(2 * radius + 1):
        out += g[k] * across[k:k + nh]
    return out


def _peak_near(prof: np.ndarray, centre: np.ndarray, search: np.ndarray | int) -> np.ndarray:
    """Index of the max of each row of ``prof`` within ``centre +- search`` (both per row)."""
    n = prof.shape[-1]
    k = np.arange(n)[None, :]
    win = np.abs(k - np.asarray(centre)[:, None]) <= np.asarray(search).reshape(-1, 1)
    return np.argmax(np.where(win, prof, -np.inf), axis=1)


def _centroid(prof: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Sub-pixel peak position: centroid of the peak sample and its two neighbours above the local floor.

    Only three samples, so the 1 mm lines a few pixels away do not pull it; the floor is the minimum
    over +-3 samples. (Measured against a wider centroid and a Gaussian fit on rendered pages at 50,
    100 and 200 dpi: this one was the most accurate at every resolution.)
    """
    n, m = prof.shape
    rows = np.arange(n)[:, None]
    offs = np.arange(-1, 2)
    vals = prof[rows, np.clip(k[:, None] + offs[None, :], 0, m - 1)]
    floor = prof[rows, np.clip(k[:, None] + np.arange(-3, 4)[None, :], 0, m - 1)].min(axis=1, keepdims=True)
    wts = vals - floor
    return k + (wts * offs).sum(axis=1) / np.maximum(wts.sum(axis=1), 1e-9)


def measure_nodes(feat: np.ndarray | tuple[np.ndarray, np.ndarray], pred: np.ndarray, which: np.ndarray, pitch: float,
                  search_frac: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Measure the nodes where ``which`` (nh, nv) is True, around the predicted lattice ``pred`` (nh, nv, 2).

    ``feat`` is a grid feature image, or the pair of :func:`ridge_features` (across x, across y).

    The line offset of each node is chosen on the profiles summed over its lattice neighbours (the grid
    is where all of them agree; a trace baseline or a text line is not), then refined on the node's own
    profile. Returns measured positions (nh, nv, 2) and contrast (nh, nv) (0 where not measured).
    """
    nh, nv = which.shape
    sel = np.argwhere(which)
    ex_all, ey_all = _local_axes(pred)
    c = pred[sel[:, 0], sel[:, 1]]
    ex = ex_all[sel[:, 0], sel[:, 1]] / pitch  # input px per canonical px
    ey = ey_all[sel[:, 0], sel[:, 1]] / pitch
    half = int(np.ceil(0.5 * pitch)) + 3
    search = int(np.ceil(search_frac * pitch))
    a = np.arange(-half, half + 1, dtype=np.float32)
    c32, ex32, ey32 = c.astype(np.float32), ex.astype(np.float32), ey.astype(np.float32)  # float32: half the memory
    k, n = len(c), len(a)
    # sample (i, j) of node k sits at c + a[j] ex + a[i] ey (rows run along ey, columns along ex): the part
    # along each axis made once per node, then one broadcast sum (the same float32 numbers, a third of the passes)
    mx = ((c32[:, 0, None] + a * ex32[:, 0, None])[:, None, :] + (a * ey32[:, 0, None])[:, :, None]).reshape(k * n, n)
    my = ((c32[:, 1, None] + a * ex32[:, 1, None])[:, None, :] + (a * ey32[:, 1, None])[:, :, None]).reshape(k * n, n)
    step = max(1, (30000 // n)) * n  # cv2.remap wants fewer than 32767 rows per call
    fv, fh = feat[:2] if isinstance(feat, tuple) else (feat, feat)
    valid = feat[2] if isinstance(feat, tuple) and len(feat) > 2 else None

    def sample(img: np.ndarray) -> np.ndarray:
        img = np.asarray(img, np.float32)  # the features are float32 (remap's output must be the type of ``out``)
        out = np.empty((k * n, n), np.float32)
        for s in range(0, k * n, step):  # each block written into its rows of ``out`` (contiguous), not concatenated
            cv2.remap(img, mx[s:s + step], my[s:s + step], cv2.INTER_LINEAR, dst=out[s:s + step],
                      borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        return out.reshape(k, n, n)

    kern = np.array([[0.25, 0.5, 0.25]], dtype=np.float32)  # light smoothing against pixel noise
    if valid is None:
        pv, ph = sample(fv).mean(axis=1), sample(fh).mean(axis=2)
        cover = None
    else:  # mean over the pixels not covered by ink: a trace crossing part of a line must not skew its profile
        vs = sample(valid)
        free_v, free_h = vs.sum(axis=1), vs.sum(axis=2)  # each sum once (a mean is the sum over n: the same numbers)
        pv, ph = sample(fv), sample(fh)
        pv *= vs  # in place: no second patch-sized array
        ph *= vs
        pv = pv.sum(axis=1) / np.maximum(free_v, 1.0)
        ph = ph.sum(axis=2) / np.maximum(free_h, 1.0)
        cover = (free_v / n, free_h / n)  # ink-free fraction along each profile position
    col = cv2.filter2D(pv.astype(np.float32), -1, kern, borderType=cv2.BORDER_REPLICATE)  # across vertical lines
    row = cv2.filter2D(ph.astype(np.float32), -1, kern, borderType=cv2.BORDER_REPLICATE)  # across horizontal lines
    # A line cut by the image border (or the border itself) biases the centroid: only nodes well inside count.
    mg = max(3.0, 0.15 * pitch)
    hh, ww = fv.shape[:2]
    inside = (c[:, 0] > mg) & (c[:, 0] < ww - 1 - mg) & (c[:, 1] > mg) & (c[:, 1] < hh - 1 - mg)
    fine = max(2, int(round(0.08 * pitch)))
    offsets = []
    contrast = np.full(k, np.inf)
    for axis, prof in enumerate((col, row)):
        z = _robust_z(prof)
        zl = np.zeros((nh, nv, n))
        zl[sel[:, 0], sel[:, 1]] = z
        vl = np.zeros((nh, nv), dtype=bool)
        vl[sel[:, 0], sel[:, 1]] = inside
        comb = _neighbour_sum(zl, vl)[sel[:, 0], sel[:, 1]]
        kc = _peak_near(comb, np.full(k, half), search)  # where the neighbourhood agrees
        kf = _peak_near(prof, kc, fine)  # this node's own line near it (z is clipped: use prof)
        offsets.append(_centroid(prof, kf) - half)
        contrast = np.minimum(contrast, z[np.arange(k), kf])
        if cover is not None:
            # Ink next to the line (a QRS spike along it) leaves its anti-aliased rim on one side and
            # biases the centroid by up to a pixel: leave such nodes to the lattice interpolation.
            cols = np.clip(kf[:, None] + np.arange(-2, 3)[None, :], 0, n - 1)
            free = cover[axis][np.arange(k)[:, None], cols].min(axis=1)
            contrast = np.where(free < 0.85, 0.0, contrast)
    meas_k = c + offsets[0][:, None] * ex + offsets[1][:, None] * ey
    inside &= (meas_k[:, 0] > mg) & (meas_k[:, 0] < ww - 1 - mg) & (meas_k[:, 1] > mg) & (meas_k[:, 1] < hh - 1 - mg)
    meas = np.zeros((nh, nv, 2))
    con = np.zeros((nh, nv))
    meas[sel[:, 0], sel[:, 1]] = meas_k
    con[sel[:, 0], sel[:, 1]] = np.where(inside, contrast, 0.0)
    return meas, con


# -- the whole detection ---------------------------------------------------------------
#: Rings (in vertical-line steps from the page centre) of the lattice growth: each is predicted by the
#: lattice fitted to the nodes inside it, so the numbering stays consistent under perspective and curl.
GROWTH_RADII = (7, 14, 22, np.inf)


def _rings(page: Page) -> np.ndarray:
    """(n_hlines, n_vlines) ring number of every node: its distance from the lattice centre, in column steps."""
    nh, nv = page.n_hlines, page.n_vlines
    ii, jj = np.meshgrid(np.arange(nh), np.arange(nv), indexing="ij")
    return np.maximum(np.abs(ii - (nh - 1) / 2.0) * (nv / nh), np.abs(jj - (nv - 1) / 2.0))


def renumber_by_growth(det: GridDetection, page: Page = CANONICAL, reach: float = 0.4) -> GridDetection:
    """Give another detector's nodes (the network's) indices that are consistent across the page.

    A network numbers lines mostly by where they are, so a region that perspective or curl moves
    more than half a box from its canonical place comes out numbered one off, as a block, which no
    outlier test sees. Here the network's indices are trusted only in the central ring; every other
    node takes the index of the nearest node of the lattice grown ring by ring from the centre
    (as :func:`detect_grid` does), within ``reach`` pitches; one node per index (the nearest).
    """
    if not det.ok or len(det.points) < 12:
        return det
    from scipy.spatial import cKDTree

    pitch = L.pitch_px(page)
    nh, nv = page.n_hlines, page.n_vlines
    ring = _rings(page)
    kept = ring[det.index[:, 0], det.index[:, 1]] <= GROWTH_RADII[0]  # the central ring seeds the lattice
    idx = det.index
    if kept.sum() < 12:
        return det
    for radius in GROWTH_RADII[1:]:
        try:  # the lattice of the nodes numbered so far predicts the next ring
            pred = L.fit_lattice(det.points[kept], idx[kept], page, smoothing=5.0, heldout=False).nodes
        except ValueError:
            return det
        d, k = cKDTree(pred.reshape(-1, 2)).query(det.points)
        idx = np.stack(np.unravel_index(k, (nh, nv)), axis=1)
        take = (d < reach * pitch) & (ring[idx[:, 0], idx[:, 1]] <= radius)
        # one point per node: the nearest
        order = np.argsort(d)
        kept = np.zeros(len(d), dtype=bool)
        _, u = np.unique(k[order][take[order]], return_index=True)
        kept[order[take[order]][u]] = True
        if kept.sum() < 12:
            return det
    changed = int((idx[kept] != det.index[kept]).any(axis=1).sum())
    return GridDetection(points=det.points[kept], index=idx[kept], strength=det.strength[kept],
                         feature=det.feature, periodicity=det.periodicity, ok=True, message=det.message,
                         extra={**det.extra, "renumbered": changed, "dropped": int((~kept).sum())})


def detect_grid(image_bgr: np.ndarray, page: Page = CANONICAL, *, min_periodicity: float = 6.0,
                min_contrast: float = 2.5, min_coverage: float = 0.08) -> GridDetection:
    """Find the 5 mm nodes of the grid on a near-canonical page.

    ``ok`` is False (with a message) when there is no periodic grid or too few nodes; the
    caller must then not warp the page.
    """
    h, w = image_bgr.shape[:2]
    pitch = L.pitch_px(page)
    empty = GridDetection(np.zeros((0, 2)), np.zeros((0, 2), dtype=np.int64), np.zeros(0), ok=False)
    if min(h, w) < 4 * pitch:
        empty.message = f"image {w}x{h} is too small to hold a 5 mm grid at this scale"
        return empty
    with step("features"):
        feats = grid_features(image_bgr, page)
    with step("periodicity"):
        scores = {k: periodicity(v, pitch) for k, v in feats.items() if not k.endswith("_valid")}
    name = max(scores, key=scores.get)
    with step("ridges"):
        feat = ridge_features(np.ascontiguousarray(feats[name], dtype=np.float32), pitch)
    if f"{name}_valid" in feats:
        feat = feat + (feats[f"{name}_valid"],)
    if scores[name] < min_periodicity:
        empty.feature, empty.periodicity = name, scores[name]
        empty.message = (f"no 5 mm grid found (periodicity {scores[name]:.1f} < {min_periodicity}); "
                         "page passed through unrectified")
        return empty

    nh, nv = page.n_hlines, page.n_vlines
    pred = L.canonical_nodes(page)
    ring = _rings(page)
    accepted = np.zeros((nh, nv), dtype=bool)
    meas = np.zeros((nh, nv, 2))
    fit = None
    # Grow outwards from the centre: each ring is predicted by the lattice fitted to the nodes inside it.
    for radius in GROWTH_RADII:
        todo = ring <= radius
        with step("measure nodes"):
            m, ctr = measure_nodes(feat, pred, todo, pitch, search_frac=0.45)
        near = np.linalg.norm(m - pred, axis=-1) < 0.4 * pitch
        accepted = todo & (ctr >= min_contrast) & near
        meas = m
        if accepted.sum() >= 12:
            try:
                with step("growth fit"):
                    fit = L.fit_lattice(meas[accepted], np.argwhere(accepted), page, smoothing=5.0, heldout=False)
            except ValueError:
                continue
            pred = fit.nodes
    if fit is None or accepted.sum() < 12:
        empty.feature, empty.periodicity = name, scores[name]
        empty.message = f"grid found but only {int(accepted.sum())} nodes measured; page passed through unrectified"
        return empty
    # Re-anchor the indices: the lattice found is self-consistent but may sit whole boxes off if
    # stage 0 left the page centre more than half a box away; take the integer shift that puts
    # the measured nodes nearest their canonical places over the whole page.
    acc_idx = np.argwhere(accepted)
    shift = _best_index_shift(meas[accepted][fit.inliers], acc_idx[fit.inliers], page)
    if shift != (0, 0):
        pred = shift_lattice(pred, shift)
    # Final pass: every node re-measured at the converged prediction, narrower search.
    with step("measure nodes"):
        m, ctr = measure_nodes(feat, pred, np.ones((nh, nv), dtype=bool), pitch, search_frac=0.3)
    near = np.linalg.norm(m - pred, axis=-1) < 0.3 * pitch
    good = (ctr >= min_contrast) & near
    det = GridDetection(points=m[good], index=np.argwhere(good), strength=ctr[good], feature=name,
                        periodicity=scores[name])
    inside = (pred[..., 0] >= 0) & (pred[..., 0] < w) & (pred[..., 1] >= 0) & (pred[..., 1] < h)
    cov = good.sum() / max(int(inside.sum()), 1)
    if good.sum() < 12 or cov < min_coverage:
        det.ok = False
        det.message = f"only {int(good.sum())} grid nodes found ({100 * cov:.0f} % of the page); page passed through unrectified"
    det.extra["coverage"] = float(cov)
    return det


def _best_index_shift(points: np.ndarray, index: np.ndarray, page: Page, reach: int = 2) -> tuple[int, int]:
    """Integer (di, dj) such that ``index + (di, dj)`` puts ``points`` closest to their canonical places."""
    best, best_cost = (0, 0), np.inf
    for di in range(-reach, reach + 1):
        for dj in range(-reach, reach + 1):
            cost = np.median(np.linalg.norm(points - L.canonical_points(index + [di, dj], page), axis=1))
            if cost < best_cost - 1e-6:
                best, best_cost = (di, dj), cost
    return best


def shift_lattice(nodes: np.ndarray, shift: tuple[int, int]) -> np.ndarray:
    """Node lattice re-indexed so that old node (i, j) becomes (i + di, j + dj); the edges are extrapolated."""
    di, dj = shift
    nh, nv = nodes.shape[:2]
    padded = L._pad_linear(nodes, max(abs(di), abs(dj)))
    p = max(abs(di), abs(dj))
    return padded[p - di:p - di + nh, p - dj:p - dj + nv].copy()


#: A network node is kept by :func:`refine_detection` only with no measured node within this many lattice steps.
OWN_POINT_GAP = 2


def refine_detection(image_bgr: np.ndarray, det: GridDetection, page: Page = CANONICAL,
                     min_contrast: float = 2.5) -> GridDetection:
    """Re-measure the nodes of another detector (the network) with the classical sub-pixel measurement.

    The other detector's indices are kept (its lattice predicts where each node is); nodes the
    classical measurement cannot confirm keep the other detector's position. Returns ``det``
    unchanged when the page shows no measurable grid.
    """
    if not det.ok or len(det.points) < 12:
        return det
    pitch = L.pitch_px(page)
    feats = grid_features(image_bgr, page)
    scores = {k: periodicity(v, pitch) for k, v in feats.items() if not k.endswith("_valid")}
    name = max(scores, key=scores.get)
    if scores[name] < 6.0:
        return det
    try:
        fit = L.fit_lattice(det.points, det.index, page, smoothing=1.0, heldout=False)
    except ValueError:
        return det
    feat = ridge_features(np.ascontiguousarray(feats[name], dtype=np.float32), pitch)
    if f"{name}_valid" in feats:
        feat = feat + (feats[f"{name}_valid"],)
    nh, nv = page.n_hlines, page.n_vlines
    m, ctr = measure_nodes(feat, fit.nodes, np.ones((nh, nv), dtype=bool), pitch, search_frac=0.25)
    good = (ctr >= min_contrast) & (np.linalg.norm(m - fit.nodes, axis=-1) < 0.25 * pitch)
    pts, idx = m[good], np.argwhere(good)
    # keep the network's own points only where the measurement found nothing nearby: next to measured
    # nodes (e.g. under a trace, where the measurement skips ink-touched nodes) the lattice fit
    # interpolates the measured ones, which are sub-pixel, while the network's are ~1 px off
    own = np.zeros((nh, nv), dtype=bool)
    own[det.index[fit.inliers, 0], det.index[fit.inliers, 1]] = True
    near = cv2.dilate(good.astype(np.uint8), np.ones((2 * OWN_POINT_GAP + 1,) * 2, np.uint8)).astype(bool)
    own &= ~near
    pts = np.concatenate([pts, fit.nodes[own]])
    idx = np.concatenate([idx, np.argwhere(own)])
    strength = np.concatenate([ctr[good], np.zeros(int(own.sum()))])
    return GridDetection(points=pts, index=idx, strength=strength, feature=f"model+{name}",
                         periodicity=scores[name], ok=True, message=det.message,
                         extra={"refined": int(good.sum()), "model_only": int(own.sum())})
