"""Training configuration: a Python file of plain assignments, loaded with :mod:`runpy`.

A config file sets any of the :class:`TrainingConfig` fields by name, for example::

    stage = "coarse"
    train_csv = "data/train_coarse.csv"
    output_dir = "runs/coarse"
    epochs = 350

Names starting with ``_`` and imported modules are ignored, so a config may compute
values (``seeds = list(range(40))``). Any other unknown name is an error, which catches
misspelt settings before a long run starts.
"""

from __future__ import annotations

import dataclasses
import runpy
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STAGES = ("coarse", "fine")

#: Published crop geometry per stage: voxels and spacing, both as (x, y, z).
STAGE_DEFAULTS: dict[str, dict[str, Any]] = {
    "coarse": {"crop_size": (96, 96, 128), "spacing": (2.0, 2.0, 3.0), "skip_top": 2},
    "fine": {"crop_size": (64, 64, 64), "spacing": (1.5, 1.5, 1.5), "skip_top": 5},
}


class ConfigError(ValueError):
    """A config file is missing, cannot run, or sets an unknown or invalid value."""


@dataclass
class TrainingConfig:
    """Settings of one coarse or fine training run.

    Data comes from ``train_csv`` (the reference CSV form, see
    :mod:`models.training.dataset`) or from phantom studies generated in memory from
    ``phantom_seeds``; one of the two is required.

    ``crop_copies`` (phantom data only) switches to crops computed before training: each
    study is built, its lesions cropped ``crop_copies`` times (the first copy without
    augmentation) and the study dropped, in ``num_workers`` processes. Each step then
    takes one random copy per lesion. 0 keeps the studies in memory and crops every
    sample during training, with ``num_workers`` data-loader processes.

    ``scales`` gives the model the crop once per spacing factor, on grids of
    ``crop_size`` voxels and ``spacing`` times the factor: ``(1.0, 0.375)`` on an 8 mm grid
    adds a 3 mm view of the lesion to the 128 mm view of its surroundings.

    ``prompt_sites`` chooses the prompts stored in the checkpoint: every site of the level
    (``"all"``) or only the sites that have training lesions (``"trained"``). Untrained
    prompts were never contrasted against images, so they can outscore the right site.
    """

    stage: str = "coarse"
    output_dir: Path = Path("runs/coarse")

    train_csv: Path | None = None
    phantom_seeds: list[int] = field(default_factory=list)
    phantom_lesions: int = 40
    crop_copies: int = 0
    vocabulary: Path | None = None

    crop_size: tuple[int, int, int] | None = None
    spacing: tuple[float, float, float] | None = None
    scales: tuple[float, ...] = (1.0,)
    width: float = 1.0
    embed_dim: int = 512
    text_encoder: str = "minilm"
    prompt_sites: str = "all"

    epochs: int = 350
    batch_size: int = 32
    batches_per_epoch: int | None = None
    learning_rate: float = 1e-4
    weight_decay: float = 5e-4
    lr_milestones: tuple[int, ...] = (100, 200)
    lr_gamma: float = 0.1

    skip_top: int | None = None
    label_smoothing: float = 0.1
    logit_scale: float = 100.0
    region_weights: dict[str, float] | None = None
    regions_per_batch: int = 2
    related_fraction: float = 0.8
    coarse_model: Path | None = None
    coarse_predictions_top: int = 3

    jitter_mm: float = 3.0
    rotation_degrees: float = 10.0
    rotation_probability: float = 0.5
    scale_range: tuple[float, float] = (0.8, 1.2)
    scale_probability: float = 0.5

    save_every: int = 10
    resume: bool = True
    seed: int = 0
    device: str = "auto"
    num_workers: int = 0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Fill stage defaults and check values; raise :class:`ConfigError` on the first bad one."""
        if self.stage not in STAGES:
            raise ConfigError(f"stage must be one of {STAGES}, got {self.stage!r}")
        defaults = STAGE_DEFAULTS[self.stage]
        self.crop_size = tuple(int(v) for v in (self.crop_size or defaults["crop_size"]))
        self.spacing = tuple(float(v) for v in (self.spacing or defaults["spacing"]))
        if self.skip_top is None:
            self.skip_top = defaults["skip_top"]

        self.output_dir = Path(self.output_dir)
        self.train_csv = Path(self.train_csv) if self.train_csv else None
        self.vocabulary = Path(self.vocabulary) if self.vocabulary else None
        self.coarse_model = Path(self.coarse_model) if self.coarse_model else None
        self.phantom_seeds = [int(seed) for seed in self.phantom_seeds]
        self.lr_milestones = tuple(int(epoch) for epoch in self.lr_milestones)
        self.scales = tuple(float(v) for v in self.scales)

        checks = [
            (len(self.crop_size) == 3 and all(v > 0 and v % 16 == 0 for v in self.crop_size),
             f"crop_size must be three positive multiples of 16 (x, y, z voxels), got {self.crop_size}"),
            (len(self.spacing) == 3 and all(v > 0 for v in self.spacing),
             f"spacing must be three positive numbers (x, y, z mm), got {self.spacing}"),
            (len(self.scales) >= 1 and all(v > 0 for v in self.scales),
             f"scales must be one or more positive spacing factors, got {self.scales}"),
            (self.width > 0, f"width must be positive, got {self.width}"),
            (self.text_encoder in ("minilm", "clip"), f"text_encoder must be 'minilm' or 'clip', got {self.text_encoder!r}"),
            (self.prompt_sites in ("all", "trained"),
             f"prompt_sites must be 'all' or 'trained', got {self.prompt_sites!r}"),
            (self.epochs >= 1, f"epochs must be at least 1, got {self.epochs}"),
            (self.batch_size >= 2, f"batch_size must be at least 2, got {self.batch_size}"),
            (self.learning_rate > 0, f"learning_rate must be positive, got {self.learning_rate}"),
            (self.save_every >= 1, f"save_every must be at least 1 epoch, got {self.save_every}"),
            (0 <= self.rotation_probability <= 1, f"rotation_probability must be in [0, 1], got {self.rotation_probability}"),
            (0 <= self.scale_probability <= 1, f"scale_probability must be in [0, 1], got {self.scale_probability}"),
            (len(self.scale_range) == 2 and 0 < self.scale_range[0] <= self.scale_range[1],
             f"scale_range must be (low, high) with 0 < low <= high, got {self.scale_range}"),
            (self.regions_per_batch >= 1, f"regions_per_batch must be at least 1, got {self.regions_per_batch}"),
            (self.crop_copies >= 0, f"crop_copies must be >= 0, got {self.crop_copies}"),
            (not (self.crop_copies and self.train_csv),
             "crop_copies applies to phantom_seeds only; set it to 0 when training from train_csv"),
            (self.jitter_mm >= 0, f"jitter_mm must be >= 0, got {self.jitter_mm}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        if self.train_csv is None and not self.phantom_seeds:
            raise ConfigError("set train_csv (a training list CSV) or phantom_seeds (phantom study seeds)")

    @property
    def crop_shape(self) -> tuple[int, int, int]:
        """Crop size as ``(z, y, x)`` voxels, the array order of the image encoder."""
        x, y, z = self.crop_size
        return (z, y, x)

    def as_dict(self) -> dict[str, Any]:
        """Return the settings as JSON-ready values (paths as strings)."""
        values = dataclasses.asdict(self)
        return {key: str(value) if isinstance(value, Path) else value for key, value in values.items()}


def read_config_file(path: Path) -> dict[str, Any]:
    """Run a Python config file and return its plain assignments.

    Raises
    ------
    ConfigError
        If the file does not exist or raises while it runs.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found")
    try:
        namespace = runpy.run_path(str(path), run_name="__config__")
    except Exception as exc:  # noqa: BLE001 - any error in user code becomes one config error
        raise ConfigError(f"config file {path} failed to run: {type(exc).__name__}: {exc}") from exc
    return {
        name: value
        for name, value in namespace.items()
        if not name.startswith("_") and not isinstance(value, (types.ModuleType, types.FunctionType, type))
    }


def build_config(cls: type, values: Mapping[str, Any], source: str) -> Any:
    """Create the dataclass ``cls`` from ``values``, naming unknown keys and bad values."""
    known = {item.name for item in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{source}: unknown setting(s) {unknown}; known settings: {sorted(known)}")
    try:
        return cls(**values)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from exc
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: invalid value: {exc}") from exc


def load_training_config(path: Path | None, stage: str | None = None, **overrides: Any) -> TrainingConfig:
    """Load a training config file, apply ``overrides`` (None values are skipped) and validate.

    Parameters
    ----------
    path : Path or None
        Config file; None uses the defaults and the overrides only.
    stage : str, optional
        Forces the stage (``clip_coarse_train`` passes ``"coarse"``); a file that sets another
        stage is an error.
    """
    values = read_config_file(path) if path else {}
    if stage is not None:
        if values.get("stage", stage) != stage:
            raise ConfigError(f"{path} is a {values['stage']!r} config, but this command trains the {stage!r} model")
        values["stage"] = stage
    values.update({key: value for key, value in overrides.items() if value is not None})
    return build_config(TrainingConfig, values, str(path) if path else "options")
