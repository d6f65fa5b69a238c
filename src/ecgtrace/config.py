"""Typed training/inference config: defaults, presets, YAML in/out and ``KEY=VALUE`` overrides.

Keys keep the upper-case names of the training guide our users come from
(``TRAIN.BATCH_SIZE``, ``MODEL.BACKBONE.NAME`` ...), so their YAML files and
command lines keep working.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ecgtrace.paper import DEFAULT_DPI  # noqa: F401  (documented default page resolution)


def _default_device() -> str:
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:  # config must load without torch (e.g. for `ecgtrace synth`)
        return "cpu"


@dataclass
class TrainConfig:
    BATCH_SIZE: int = 2
    EPOCHS: int = 5
    LEARNING_RATE: float = 1e-4
    WEIGHT_DECAY: float = 1e-4
    NUM_WORKERS: int = 0
    VAL_FRACTION: float = 0.1
    SEED: int = 0
    LOG_EVERY: int = 10  # log a "Batch i/N, Loss" line every this many batches
    AMP: bool = True  # mixed precision; only ever used on CUDA
    GRAD_CLIP: float = 1.0
    MAX_STEPS_PER_EPOCH: int = 0  # 0 = the whole data set


@dataclass
class BackboneConfig:
    NAME: str = "resnet18"
    PRETRAINED: bool = False
    WEIGHTS: str = ""  # a local weights file; nothing is ever downloaded


@dataclass
class ModelConfig:
    INPUT_SIZE: list[int] = field(default_factory=lambda: [1152, 1440])  # (height, width)
    BACKBONE: BackboneConfig = field(default_factory=BackboneConfig)
    DECODER_CHANNELS: list[int] = field(default_factory=lambda: [256, 128, 64, 32])
    #: Weights that start training (fine-tuning, e.g. a low-resolution run at full resolution): a
    #: checkpoint (.pth), an exported .safetensors, or "shipped" (the weights that ship for this
    #: stage); same architecture required. Ignored on --resume.
    INIT: str = ""


@dataclass
class DataConfig:
    ROOT: str = "../ecg_data/physionet-ecg-image-digitization/"
    SPLIT: str = "train"
    VARIANTS: list[str] = field(default_factory=list)  # empty = every variant found
    #: Render fresh synthetic pages on the fly when ROOT holds no data set (N per epoch).
    SYNTHETIC: bool = True
    SYNTHETIC_PER_EPOCH: int = 450
    SYNTHETIC_SEED: int = 0
    #: Share of synthetic pages with ECG-Image-Kit's augmentation, and of those with its wrinkle
    #: texture (more of either for a fine-tune aimed at such pages; the defaults draw today's mix).
    SYNTHETIC_AUGMENT_P: float = 0.35
    SYNTHETIC_WRINKLE_P: float = 0.35


@dataclass
class DeviceConfig:
    DEVICE: str = field(default_factory=_default_device)


@dataclass
class DebugConfig:
    ENABLED: bool = False
    N_SAMPLES: int = 8  # samples used in debug mode
    SAVE_IMAGES: bool = True


@dataclass
class OutputConfig:
    ROOT: str = "./outputs/"


@dataclass
class Config:
    STAGE: int = 0
    TRAIN: TrainConfig = field(default_factory=TrainConfig)
    MODEL: ModelConfig = field(default_factory=ModelConfig)
    DATA: DataConfig = field(default_factory=DataConfig)
    DEVICE: DeviceConfig = field(default_factory=DeviceConfig)
    DEBUG: DebugConfig = field(default_factory=DebugConfig)
    OUTPUT: OutputConfig = field(default_factory=OutputConfig)

    # -- conversions ------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Config":
        cfg = cls()
        for key, value in flatten(d).items():
            set_key(cfg, key, value)
        return cfg

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    @property
    def checkpoint_dir(self) -> Path:
        return Path(self.OUTPUT.ROOT) / f"stage{self.STAGE}_checkpoints"


#: Per-stage defaults layered over the dataclass defaults (the guide's defaults are stage 0's).
STAGE_DEFAULTS: dict[int, dict[str, Any]] = {
    0: {},
    1: {"MODEL.INPUT_SIZE": [1152, 1440]},
    2: {"MODEL.INPUT_SIZE": [1700, 2200]},
}

#: Named presets. ``small`` fits a CPU smoke run: tiny pages, few samples.
PRESETS: dict[str, dict[str, Any]] = {
    "small": {
        "MODEL.INPUT_SIZE": [256, 320],
        "MODEL.DECODER_CHANNELS": [64, 32, 24, 16],
        "TRAIN.BATCH_SIZE": 4,
        "TRAIN.EPOCHS": 2,
        "TRAIN.LEARNING_RATE": 1e-3,
        "DATA.SYNTHETIC_PER_EPOCH": 32,
        "DEVICE.DEVICE": "cpu",
    },
    # Reduced-resolution runs on a 2-core CPU (one thread per run, two runs at once; measured: stage 1
    # 45 min, stage 2 97 min): the recipes behind the CPU-trained stage-1/2 models in the README (stage 0's is an
    # earlier session's, ~1 h); the stage-specific part is in STAGE_PRESETS.
    "cpu": {"TRAIN.LEARNING_RATE": 1e-3, "DEVICE.DEVICE": "cpu"},
}

#: Per-stage layers of a preset, applied after ``PRESETS[name]``.
STAGE_PRESETS: dict[str, dict[int, dict[str, Any]]] = {
    "cpu": {
        0: {"MODEL.INPUT_SIZE": [288, 352], "MODEL.DECODER_CHANNELS": [64, 32, 24, 16], "TRAIN.BATCH_SIZE": 4,
            "DATA.SYNTHETIC_PER_EPOCH": 200, "TRAIN.EPOCHS": 30},
        1: {"MODEL.INPUT_SIZE": [352, 448], "MODEL.DECODER_CHANNELS": [128, 64, 32, 16], "TRAIN.BATCH_SIZE": 4,
            "DATA.SYNTHETIC_PER_EPOCH": 160, "TRAIN.EPOCHS": 12},
        2: {"MODEL.INPUT_SIZE": [850, 1100], "MODEL.DECODER_CHANNELS": [128, 64, 32, 16], "TRAIN.BATCH_SIZE": 2,
            "DATA.SYNTHETIC_PER_EPOCH": 200, "TRAIN.EPOCHS": 20},
    },
}


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _coerce(value: Any, current: Any, key: str) -> Any:
    """Convert ``value`` to the type of the field's ``current`` value, or explain why not."""
    if isinstance(current, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
    elif isinstance(current, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif isinstance(current, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads "1e-4" as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif isinstance(current, str):
        return "" if value is None else str(value)
    elif isinstance(current, list):
        if isinstance(value, (list, tuple)):
            return list(value)
    raise ValueError(f"config key {key}: cannot use {value!r} where a {type(current).__name__} is expected")


def set_key(cfg: Config, key: str, value: Any) -> None:
    """Set a dotted key (``TRAIN.BATCH_SIZE``) with type checking; unknown keys are an error."""
    parts = key.split(".")
    obj: Any = cfg
    for i, p in enumerate(parts):
        if not dataclasses.is_dataclass(obj) or p not in {f.name for f in dataclasses.fields(obj)}:
            known = ", ".join(sorted(flatten(cfg.to_dict())))
            raise KeyError(f"unknown config key {key!r}; known keys: {known}")
        if i == len(parts) - 1:
            setattr(obj, p, _coerce(value, getattr(obj, p), key))
        else:
            obj = getattr(obj, p)


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["TRAIN.EPOCHS=3", "MODEL.INPUT_SIZE=[256,320]"]`` -> dict; values are read as YAML."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not KEY=VALUE (e.g. TRAIN.EPOCHS=3)")
        k, v = item.split("=", 1)
        out[k.strip()] = yaml.safe_load(v) if v.strip() else ""
    return out


def load_config(
    stage: int = 0,
    path: str | Path | None = None,
    overrides: list[str] | dict[str, Any] | None = None,
    preset: str | None = None,
) -> Config:
    """Build a config: dataclass defaults < stage defaults < preset < YAML file < overrides."""
    cfg = Config(STAGE=stage)
    layers: list[dict[str, Any]] = [STAGE_DEFAULTS.get(stage, {})]
    if preset:
        if preset not in PRESETS:
            raise KeyError(f"unknown preset {preset!r}; known presets: {', '.join(PRESETS)}")
        layers.append(PRESETS[preset])
        layers.append(STAGE_PRESETS.get(preset, {}).get(stage, {}))
    if path:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"config file {p} not found; write one with `ecgtrace train --dump-config`")
        data = yaml.safe_load(p.read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"config file {p} must hold a mapping of sections, e.g. 'TRAIN: {{EPOCHS: 5}}'")
        data.pop("STAGE", None)  # the stage comes from the command, not the file
        layers.append(flatten(data))
    if overrides:
        layers.append(parse_overrides(overrides) if isinstance(overrides, list) else dict(overrides))
    for layer in layers:
        for k, v in layer.items():
            set_key(cfg, k, v)
    return cfg
