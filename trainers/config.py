"""Typed trainer config: the composed Hydra config is validated here once, at the entry point."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"

METRIC_KEYS = {"accuracy": "val_acc", "macro_f1": "val_macro_f1", "auroc": "val_auroc"}
"""Primary metric name -> the per-epoch metric logged for it (its summary is `best_<key>`)."""


class UserError(Exception):
    """A problem the user can fix (bad data, unknown model, invalid config): one sentence, no traceback."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _DataBase(Strict):
    image_size: int = Field(gt=0, le=2048)
    """Square input size in pixels."""
    val_fraction: float = Field(gt=0, lt=1)
    """Share of the data held out for validation when no split is given."""
    split_seed: int = Field(0, ge=0)
    """Seed of the train/validation split: fixed per mission, independent of trainer.seed."""
    batch_size: int = Field(gt=0, le=4096)
    num_workers: int = Field(ge=0, le=64)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    balanced_sampler: bool = False
    """Draw training batches with inverse class-frequency weights."""


class DigitsData(_DataBase):
    kind: Literal["digits"]


class ImageFolderData(_DataBase):
    kind: Literal["imagefolder"]
    root: Path
    """One folder per class, or train/ and val/ folders with one folder per class each; a test/ folder
    beside them (one folder per class) is held-out test data, never trained or validated on."""
    max_bad_fraction: float = Field(0.05, ge=0, le=1)
    """Unreadable images are skipped; more than this share fails the run."""


class CsvData(_DataBase):
    kind: Literal["csv"]
    csv_path: Path
    image_root: Path | None = None
    """Folder that relative image paths are read from (default: the CSV's folder)."""
    path_column: str
    label_column: str
    group_column: str | None = None
    """All rows of one group (e.g. a patient) stay on one side of the split."""
    test_csv_path: Path | None = None
    """Held-out test data in the same column layout, scored only by `trainers.evaluate`."""
    max_bad_fraction: float = Field(0.05, ge=0, le=1)


DataConfig = Annotated[DigitsData | ImageFolderData | CsvData, Field(discriminator="kind")]


class ModelConfig(Strict):
    name: str = Field(min_length=1)
    """A timm model name."""
    pretrained: bool = False
    """Load weights from checkpoint_path; nothing is downloaded."""
    checkpoint_path: Path | None = None
    drop_rate: float = Field(0.0, ge=0, lt=1)

    @model_validator(mode="after")
    def _weights_are_local(self) -> ModelConfig:
        if self.pretrained and self.checkpoint_path is None:
            raise ValueError(
                "model.pretrained=true needs model.checkpoint_path: weights are never downloaded"
            )
        return self


class OptimConfig(Strict):
    name: Literal["adamw", "sgd"]
    lr: float = Field(gt=0, le=10, allow_inf_nan=False)
    weight_decay: float = Field(ge=0, le=1, allow_inf_nan=False)
    momentum: float = Field(0.9, ge=0, lt=1)
    schedule: Literal["cosine", "onecycle", "constant"]
    warmup_epochs: int = Field(0, ge=0)


class AugConfig(Strict):
    name: str
    crop_scale: tuple[float, float] | None = None
    hflip: float = Field(0.0, ge=0, le=1)
    rotation: float = Field(0.0, ge=0, le=180)
    trivial_augment: bool = False
    random_erasing: float = Field(0.0, ge=0, le=1)
    mixup_alpha: float = Field(0.0, ge=0)
    cutmix_alpha: float = Field(0.0, ge=0)


class LossConfig(Strict):
    name: Literal["cross_entropy"]
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    class_weights: Literal["balanced"] | None = None


class TrainerConfig(Strict):
    accelerator: Literal["cpu", "gpu", "auto"]
    devices: int = Field(ge=-1)
    strategy: str
    precision: Literal["32-true", "16-mixed", "bf16-mixed"]
    epochs: int = Field(gt=0, le=1000)
    deterministic: bool
    seed: int = Field(ge=0)
    limit_train_batches: int | float = Field(gt=0)
    """A float is a fraction of the batches per epoch, an int a number of batches (Lightning's rule)."""
    limit_val_batches: int | float = Field(gt=0)
    timeout_s: float = Field(gt=0)
    """A run past this wall time is stopped and ends KILLED."""


class MetricConfig(Strict):
    name: str
    direction: Literal["maximize", "minimize"]
    tta: bool = False
    """Average predictions over the image and its mirror at evaluation."""

    @model_validator(mode="after")
    def _known_metric(self) -> MetricConfig:
        if self.name not in METRIC_KEYS:
            raise ValueError(
                f"metric.name '{self.name}' is not valid for image classification; "
                f"choose one of {', '.join(METRIC_KEYS)}"
            )
        if self.direction != "maximize":
            raise ValueError(f"metric.direction for {self.name} must be maximize (higher is better)")
        return self

    @property
    def key(self) -> str:
        """The per-epoch metric name, e.g. `val_acc`."""
        return METRIC_KEYS[self.name]

    @property
    def summary_key(self) -> str:
        return f"best_{self.key}"

    @property
    def test_key(self) -> str:
        """The held-out test metric `evaluate` logs, e.g. `test_acc`."""
        return "test_" + self.key.removeprefix("val_")


class TrackingConfig(Strict):
    uri: str
    experiment: str = Field(min_length=1)
    log_checkpoint: bool = False


class TrainConfig(Strict):
    data: DataConfig
    model: ModelConfig
    optim: OptimConfig
    aug: AugConfig
    loss: LossConfig
    trainer: TrainerConfig
    metric: MetricConfig
    tracking: TrackingConfig
    run_label: str | None = None


def from_hydra(cfg: DictConfig) -> TrainConfig:
    """Validate a composed config; raise UserError with the first problem in one sentence."""
    try:
        data = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as err:
        raise UserError(
            f"Missing required config value {err.full_key}: set it with {err.full_key}=..."
        ) from None
    data.pop("hydra", None)
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"] if not str(p).startswith(("function-", "tagged-")))
        where = where.replace(".digits", "").replace(".imagefolder", "").replace(".csv", "")
        message = first["msg"].removeprefix("Value error, ")
        raise UserError(f"Invalid config at {where or 'top level'}: {message}") from None
