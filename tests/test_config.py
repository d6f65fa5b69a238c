"""config.py: defaults from the training guide, YAML round trip, overrides, clear errors."""

import pytest

from ecgtrace.config import Config, load_config


def test_guide_defaults():
    cfg = load_config(0)
    assert cfg.TRAIN.BATCH_SIZE == 2 and cfg.TRAIN.EPOCHS == 5
    assert cfg.TRAIN.LEARNING_RATE == pytest.approx(1e-4)
    assert cfg.MODEL.INPUT_SIZE == [1152, 1440]
    assert cfg.MODEL.BACKBONE.NAME == "resnet18" and cfg.MODEL.BACKBONE.PRETRAINED is False
    assert cfg.DEBUG.ENABLED is False
    assert cfg.DATA.ROOT == "../ecg_data/physionet-ecg-image-digitization/"
    assert str(cfg.checkpoint_dir).replace("\\", "/").endswith("outputs/stage0_checkpoints")


def test_yaml_round_trip_and_overrides(tmp_path):
    cfg = load_config(0, overrides=["TRAIN.EPOCHS=3", "MODEL.INPUT_SIZE=[256, 320]", "TRAIN.LEARNING_RATE=1e-3"])
    assert cfg.TRAIN.EPOCHS == 3 and cfg.MODEL.INPUT_SIZE == [256, 320]
    assert cfg.TRAIN.LEARNING_RATE == pytest.approx(1e-3)
    p = tmp_path / "c.yaml"
    cfg.save(p)
    again = load_config(0, path=p)
    assert again.to_dict() == cfg.to_dict()
    # command line beats the file
    assert load_config(0, path=p, overrides=["TRAIN.EPOCHS=7"]).TRAIN.EPOCHS == 7
    assert Config.from_dict(cfg.to_dict()).to_dict() == cfg.to_dict()


def test_preset_and_errors(tmp_path):
    assert load_config(0, preset="small").MODEL.INPUT_SIZE == [256, 320]
    # the cpu preset is per stage; an override still wins over it
    assert load_config(1, preset="cpu").MODEL.INPUT_SIZE == [352, 448]
    assert load_config(2, preset="cpu").MODEL.INPUT_SIZE == [850, 1100]
    assert load_config(2, preset="cpu").TRAIN.LEARNING_RATE == 1e-3
    assert load_config(2, preset="cpu", overrides=["TRAIN.EPOCHS=3"]).TRAIN.EPOCHS == 3
    with pytest.raises(KeyError, match="unknown config key"):
        load_config(0, overrides=["TRAIN.EPOCS=3"])
    with pytest.raises(ValueError, match="TRAIN.BATCH_SIZE"):
        load_config(0, overrides=["TRAIN.BATCH_SIZE=two"])
    with pytest.raises(ValueError, match="KEY=VALUE"):
        load_config(0, overrides=["TRAIN.EPOCHS"])
    with pytest.raises(FileNotFoundError):
        load_config(0, path=tmp_path / "missing.yaml")
    with pytest.raises(KeyError, match="unknown preset"):
        load_config(0, preset="huge")
