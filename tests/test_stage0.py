"""Stage 0: targets, the learned path's geometry (with an oracle network), the classical path, the loader."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from ecgtrace import orient
from ecgtrace.config import load_config
from ecgtrace.geometry import apply_homography
from ecgtrace.models.checkpoint import LoadedModel, PretrainedCfg
from ecgtrace.paper import CANONICAL, MARKERS, Page
from ecgtrace.stages.base import StageError
from ecgtrace.stages.stage0 import FLIP_CLASS, ECGModelLoader, Stage0, classical_orientation
from ecgtrace.train.stage0 import TASK, Stage0Synthetic, make_sample

torch.set_num_threads(1)
SMALL = Page(dpi=60)  # 660 x 510 pages: quick to render


def _page(i: int = 0, variant: str = "0001", c: int = 0, page: Page = SMALL):
    from ecgtrace.data.synthetic import SyntheticPages, apply_variant

    pages = SyntheticPages(4, seed=11, page=page)
    img, gt, _, _ = pages.clean(i)
    return apply_variant(img, gt, variant, np.random.default_rng(i), orientation=c)


def test_targets_follow_the_markers_in_every_orientation():
    for c in range(8):
        img, gt = _page(0, "0001", c)
        s = make_sample(img, gt.markers, c, (96, 128), rng=None, augment=False)
        assert s["image"].shape == (3, 96, 128) and s["markers"].shape == (96, 128)
        assert int(s["orientation"]) == c and bool(s["markers_valid"].all()) and bool(s["h_ok"])
        assert set(np.unique(s["markers"].numpy())) == set(range(14))
        # a network that outputs the target exactly scores perfectly
        batch = {k: v[None] for k, v in s.items()}
        out = {"markers": torch.nn.functional.one_hot(batch["markers"], 14).permute(0, 3, 1, 2).float() * 20,
               "orientation": torch.nn.functional.one_hot(batch["orientation"], 8).float() * 20}
        m = TASK.metrics(out, batch)
        assert m["orient_acc"] == 1.0 and m["marker_recall"] == 1.0
        assert m["marker_err_px"] < 6.0, m  # disc rasterization at 128 px wide, in canonical px
        loss, parts = TASK.loss(out, batch)
        assert loss.item() < 1e-3


def test_tiny_stage0_model_loss_drops_on_a_few_pages():
    cfg = load_config(0, overrides={"MODEL.BACKBONE.NAME": "test_efficientnet", "MODEL.DECODER_CHANNELS": [16, 8, 8]})
    torch.manual_seed(0)
    model = TASK.build_model(cfg)
    ds = Stage0Synthetic(4, seed=3, input_size=(96, 128), variants=("0001", "0003"), augment=False,
                         fresh_per_epoch=False, page=SMALL)
    batch = torch.utils.data.default_collate([ds[i] for i in range(4)])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(12):
        loss, _ = TASK.loss(model(batch["image"]), batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0], losses


class Oracle(nn.Module):
    """Answers with the exact targets of one known picture (tests the geometry, not the learning)."""

    def __init__(self, sample: dict) -> None:
        super().__init__()
        self.sample = sample

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        m = torch.nn.functional.one_hot(self.sample["markers"][None], 14).permute(0, 3, 1, 2).float() * 10
        o = torch.nn.functional.one_hot(self.sample["orientation"][None], 8).float() * 10
        return {"markers": m.repeat(x.shape[0], 1, 1, 1), "orientation": o.repeat(x.shape[0], 1)}


@pytest.mark.parametrize("variant,c", [("0001", 0), ("0005", 3), ("0003", 6)])
def test_learned_path_geometry_with_oracle(variant, c):
    img, gt = _page(1, variant, c, page=Page(dpi=100))
    st = Stage0()
    size = (384, 480)
    st.net = LoadedModel(model=Oracle(make_sample(img, gt.markers, c, size, rng=None, augment=False)),
                         cfg=PretrainedCfg(architecture="oracle", stage=0, input_size=size), path=Path("oracle"))
    page = st(img)
    assert page.method == "model" and page.ok, page.message
    assert page.orientation == c and page.image.shape == (1700, 2200, 3)
    # the homography maps the true label centres (picture px) onto the canonical page
    err = np.linalg.norm(apply_homography(page.homography, gt.markers) - CANONICAL.label_centers, axis=1)
    assert np.median(err) < 6.0, err
    assert len(page.markers) == len(MARKERS)


def test_flip_class_map():
    probe = np.arange(12, dtype=np.uint8).reshape(3, 4)
    for c in range(8):
        mirrored = orient.orient_image(probe, c)[:, ::-1]
        assert np.array_equal(orient.orient_image(probe, int(FLIP_CLASS[c])), mirrored)


def test_classical_rotation_and_homography():
    for c in (0, 1, 2, 3):
        img, gt = _page(2, "0001", c)
        rc, conf, _ = classical_orientation(img)
        assert rc == c
        page = Stage0()(img)
        assert page.method == "classical" and page.orientation == c
        err = np.linalg.norm(apply_homography(page.homography, gt.markers) - CANONICAL.label_centers, axis=1)
        assert err.max() < 3.0, err  # clean pages: undoing the rotation + resizing is exact


def test_long_vertical_folds_do_not_turn_a_landscape_picture():
    """A faint page with long straight folds (own bench 0010) has columns a little peakier than its trace rows:
    a landscape picture stays upright then."""
    img, _ = _page(1, "0001", 0)
    img = img.copy()
    h, w = img.shape[:2]
    for x in range(20, w, 37):  # grey fold lines, as long as the picture
        img[:, x:x + 2] = 90
    _, _, cues = classical_orientation(img)
    assert cues["row_peakiness"] < cues["col_peakiness"] < 1.5 * cues["row_peakiness"], cues  # the case at hand
    c, conf, _ = classical_orientation(img)
    assert c == 0 and conf == 0.0  # upright, and said to be a guess
    # a sheet turned by 90 degrees inside a landscape picture is still turned back: its columns are clearly banded
    clean, _ = _page(1, "0001", 0)
    turned = np.ascontiguousarray(np.rot90(clean))
    th, tw = turned.shape[:2]
    pad = (int(1.3 * th) - tw) // 2
    wide = cv2.copyMakeBorder(turned, 0, 0, pad, pad, cv2.BORDER_CONSTANT, value=(255, 255, 255))
    assert wide.shape[1] >= 1.15 * wide.shape[0]
    assert classical_orientation(wide)[0] in (1, 3)


def test_bad_input_raises_one_line_stage_error():
    st = Stage0()
    for bad, why in [(np.full((400, 600, 3), 255, np.uint8), "blank"), (np.zeros((20, 30, 3), np.uint8), "too small"),
                     ("a.png", "expected an image array")]:
        with pytest.raises(StageError, match=why) as e:
            st(bad)
        assert "\n" not in str(e.value)


def test_loader_inference_writes_outputs(tmp_path, capsys):
    """A stage-0 checkpoint from the real engine, loaded by the guide's API and the stage0 command."""
    from ecgtrace.cli import main as cli_main
    from ecgtrace.train.engine import fit

    cfg = load_config(0, overrides={
        "OUTPUT.ROOT": str(tmp_path / "out"), "DATA.ROOT": "", "MODEL.BACKBONE.NAME": "test_efficientnet",
        "MODEL.DECODER_CHANNELS": [16, 8, 8], "MODEL.INPUT_SIZE": [64, 80], "DATA.SYNTHETIC_PER_EPOCH": 2,
        "DATA.VARIANTS": ["0001"], "TRAIN.EPOCHS": 1, "TRAIN.VAL_FRACTION": 0.0, "DEVICE.DEVICE": "cpu"})
    fit(cfg)
    ckpt = tmp_path / "out" / "stage0_checkpoints" / "stage0_best.pth"
    img, _ = _page(3)
    cv2.imwrite(str(tmp_path / "page.png"), img)
    from ecgtrace import ECGModelLoader as Exported

    assert Exported is ECGModelLoader
    loader = ECGModelLoader(str(ckpt), "cpu")
    model, config = loader.load_model()
    assert isinstance(model, nn.Module) and config["MODEL"]["INPUT_SIZE"] == [64, 80]
    res = loader.inference(tmp_path / "page.png", output_dir=tmp_path / "inf")
    for key in ("orientation_class", "orientation_confidence", "markers", "homography", "normalized_image"):
        assert key in res
    assert 0 <= res["orientation_class"] < 8 and 0.0 <= res["orientation_confidence"] <= 1.0
    assert res["normalized_image"].shape == (1700, 2200, 3) and res["homography"].shape == (3, 3)
    assert (tmp_path / "inf" / "marker_prediction.jpg").is_file() and (tmp_path / "inf" / "normalized.png").is_file()
    rc = cli_main(["stage0", "--checkpoint", str(ckpt), "--image", str(tmp_path / "page.png"),
                   "--output", str(tmp_path / "cmd")])
    out = capsys.readouterr().out
    assert rc == 0 and "Orientation: class" in out and "confidence" in out
    with pytest.raises(StageError, match="not found"):
        loader.inference(tmp_path / "missing.png")


def _photo_of_sheet(sheet: np.ndarray, corners: np.ndarray, size=(1100, 1400), seed: int = 0) -> np.ndarray:
    """The sheet warped onto a dark, textured 'table' with its corners at ``corners``."""
    h, w = size
    rng = np.random.default_rng(seed)
    noise = cv2.GaussianBlur(rng.normal(0, 1, (h, w)).astype(np.float32), (0, 0), 6)
    table = np.clip(np.stack([40 + 300 * noise, 70 + 300 * noise, 110 + 300 * noise], -1), 0, 255).astype(np.uint8)
    sh, sw = sheet.shape[:2]
    src = np.float32([[-0.5, -0.5], [sw - 0.5, -0.5], [sw - 0.5, sh - 0.5], [-0.5, sh - 0.5]])
    hom = cv2.getPerspectiveTransform(src, corners.astype(np.float32))
    warped = cv2.warpPerspective(sheet, hom, (w, h), flags=cv2.INTER_LINEAR)
    inside = cv2.warpPerspective(np.full((sh, sw), 255, np.uint8), hom, (w, h)) > 127
    table[inside] = warped[inside]
    return table


def test_sheet_outline_gives_the_perspective():
    """A whole sheet in a photo: its four corners are found (a few px) and stage 0 undoes the perspective."""
    from ecgtrace.data import render
    from ecgtrace.data.signals import synthesize_ecg
    from ecgtrace.stages.paper_outline import find_paper_outline

    rng = np.random.default_rng(4)
    sheet, _ = render.render_page(synthesize_ecg(rng, fs=250.0), 250.0, page=Page(dpi=100),
                                  style=render.RenderStyle(grid="red"), rng=rng)
    corners = np.array([[160.0, 120.0], [1250.0, 180.0], [1210.0, 1000.0], [120.0, 930.0]])
    photo = _photo_of_sheet(sheet, corners)
    out = find_paper_outline(photo)
    assert out is not None
    assert np.abs(out.corners - corners).max() < 4.0, out.corners
    page = Stage0()(photo)  # classical: no checkpoint
    assert "perspective from the sheet's outline" in page.message
    canon = np.array([[-0.5, -0.5], [2199.5, -0.5], [2199.5, 1699.5], [-0.5, 1699.5]])
    assert np.abs(apply_homography(page.homography, corners) - canon).max() < 12.0  # < 0.3 box at 200 dpi
    # a sheet that runs off the picture, and a picture of nothing, give no outline
    assert find_paper_outline(_photo_of_sheet(sheet, corners - [200.0, 0.0])) is None
    assert find_paper_outline(np.full((600, 800, 3), 128, np.uint8)) is None


def test_a_turned_flat_page_is_deskewed():
    """A flat page turned by a few degrees (ECG-Image-Kit's --rotate): the classical path measures the angle
    from its grid lines and turns it back, so the label centres land on their canonical places; an upright
    page and the estimate's own gain say when not to."""
    from ecgtrace.data.render import RenderStyle, render_page
    from ecgtrace.data.signals import synthesize_ecg
    from ecgtrace.stages.stage0 import MIN_SKEW_GAIN, estimate_skew, rotation_about_centre

    signals = synthesize_ecg(np.random.default_rng(2), fs=500.0)
    img, gt = render_page(signals, 500.0, page=CANONICAL, style=RenderStyle(), rng=np.random.default_rng(0))
    small = cv2.resize(img, (1100, 850), interpolation=cv2.INTER_AREA)
    angle, gain = estimate_skew(small)
    assert abs(angle) < 0.1 and gain < 1.5  # upright: nothing to do
    for deg in (3.0, -4.0):
        rot = rotation_about_centre(deg, CANONICAL.size)
        turned = cv2.warpPerspective(img, rot, (CANONICAL.width_px, CANONICAL.height_px), flags=cv2.INTER_LINEAR,
                                     borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))  # black corners
        est, gain = estimate_skew(cv2.resize(turned, (1100, 850), interpolation=cv2.INTER_AREA))
        assert abs(est - deg) < 0.15 and gain > MIN_SKEW_GAIN, (deg, est, gain)
        page = Stage0()(turned)
        assert "deskewed" in page.message, page.message
        labels = apply_homography(page.homography, apply_homography(rot, gt.markers))
        assert np.median(np.linalg.norm(labels - CANONICAL.label_centers, axis=1)) < 4.0
