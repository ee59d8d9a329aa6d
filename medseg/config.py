"""Pipeline configuration: the only module that reads raw YAML.

A pipeline file may ``extends:`` one or more presets (paths relative to the file). Presets are merged
depth-first, then the file itself, then ``--set key.path=value`` overrides. The merged mapping is
validated by pydantic models with ``extra="forbid"``; any problem becomes a one-line
:class:`~medseg.errors.ConfigError` naming the file (or override) that set the offending key.
"""

from __future__ import annotations

import difflib
import os
import reprlib
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from medseg.errors import ConfigError
from medseg.registry import LOSSES, NETWORKS

DATA_ROOT_ENV = "MEDSEG_DATA_ROOT"
DEVICE_PATTERN = r"^(auto|cpu|cuda(:[0-9]+)?)$"  # (medseg.devices resolves it; torch is not imported here)
STAGES = ("train", "evaluate", "predict")

Probability = Annotated[float, Field(ge=0.0, le=1.0)]
PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0.0)]
NonNegativeInt = Annotated[int, Field(ge=0)]
NonNegativeFloat = Annotated[float, Field(ge=0.0)]


class Section(BaseModel):
    """Base for every config section: unknown keys are errors; a validated config is never changed (frozen)."""

    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)


class SyntheticConfig(Section):
    """The embedded synthetic dermoscopy set used when no real dataset is configured."""

    fallback: bool = True
    num_cases: Annotated[int, Field(ge=6)] = 60
    image_size: tuple[PositiveInt, PositiveInt] = (192, 256)
    seed: NonNegativeInt = 0
    cache_dir: Path = Path("data/cache")
    epochs: PositiveInt | None = None
    # lesion: binary lesion masks; multiclass: also hair and ruler ticks (0 background, 1 lesion, 2 hair, 3 ruler)
    kind: Literal["lesion", "multiclass"] = "lesion"


class SplitConfig(Section):
    """Seeded train/val/test split, written once and reused."""

    val_fraction: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.15
    test_fraction: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.2
    seed: NonNegativeInt | None = None
    file: Path | None = None
    tiny: bool = False

    @model_validator(mode="after")
    def _fractions_leave_training_data(self) -> SplitConfig:
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ValueError("val_fraction + test_fraction must be below 0.9 to leave cases for training")
        return self


class CaseConfig(Section):
    """One case listed in the pipeline file (paths relative to the dataset folder)."""

    id: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
    image: list[str]
    label: str | None = None


class LabelInfo(Section):
    """What one value of a label map is: a name (required), a display colour and a coded concept (DICOM-SEG).

    ``code`` and ``category`` are ``SCHEME:VALUE`` (e.g. ``SCT:10200004``); the category defaults to an anatomical
    structure.
    """

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_ .-]*$", max_length=64)]
    color: tuple[int, int, int] | None = None
    code: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+:[A-Za-z0-9_.-]+$")] | None = None
    category: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+:[A-Za-z0-9_.-]+$")] | None = None

    @field_validator("color", mode="before")
    @classmethod
    def _rgb(cls, value: Any) -> Any:
        ok = (
            isinstance(value, (list, tuple))
            and len(value) == 3
            and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in value)
        )
        if value is not None and not ok:
            raise ValueError("a colour is three integers 0-255, e.g. [220, 80, 60]")
        return value


def _label_shorthand(value: Any) -> Any:
    """``{1: liver}`` is ``{1: {name: liver}}``."""
    if isinstance(value, dict):
        return {k: {"name": v} if isinstance(v, str) else v for k, v in value.items()}
    return value


class DataConfig(Section):
    """Where the images and masks are and how they are matched."""

    name: str = "dataset"
    root: Path | None = None
    dataset_dir: str = ""
    layout: Literal["auto", "folder", "csv", "msd", "nnunet", "folders", "list"] = "auto"
    modalities: list[str] = Field(default_factory=list)
    cases: list[CaseConfig] = Field(default_factory=list)
    labels_dir: str = "labelsTr"
    foreground_labels: list[int] | None = None
    label_mapping: dict[int, NonNegativeInt] | None = None
    # the values of the label maps medseg writes (classes; with regions: raw label values), named
    labels: dict[PositiveInt, LabelInfo] | None = None
    # region-based training: one sigmoid channel per (possibly overlapping) region of raw labels (values or names)
    regions: dict[Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")], list[int | str]] | None = None
    # the order regions are painted into a label map (needed when regions overlap; later regions win)
    region_order: list[str] | None = None
    # voxels with this raw label value are unannotated: excluded from the loss and the metrics
    ignore_label: Annotated[int, Field(ge=1, le=65535)] | None = None
    images_dir: str = "images"
    masks_dir: str = "masks"
    mask_suffixes: list[str] = Field(default_factory=lambda: ["", "_segmentation", "_mask", "_lesion"])
    csv_file: str = "pairs.csv"
    dataset_json: str = "dataset.json"
    synthetic: SyntheticConfig = Field(default_factory=SyntheticConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    # memory: decoded, preprocessed cases kept in RAM; disk: kept under cache_dir (keyed by each file's size and
    # time and by the preprocessing), reused by later runs, folds and ranks; auto: memory when the cases fit
    # cache_memory_fraction of RAM, else disk; none: decoded every epoch
    cache: Literal["memory", "disk", "auto", "none"] = "memory"
    cache_dir: Path = Path("data/cache/preprocessed")
    cache_memory_fraction: Annotated[float, Field(gt=0.0, le=1.0)] = 0.5
    num_workers: NonNegativeInt = 0
    # what `medseg run` does with cases the data check finds errors in: stop (listing them all) or leave them out
    on_bad_case: Literal["error", "skip"] = "error"

    _labels_shorthand = field_validator("labels", mode="before")(classmethod(lambda cls, v: _label_shorthand(v)))


class IntensityConfig(Section):
    """Intensity normalisation: CT clipped to a HU window and mapped linearly onto ``scaled_to`` (default [0, 1];
    ``medseg plan`` z-scores with foreground statistics by mapping the window onto its z-scores); MRI z-scored over
    non-zero voxels."""

    kind: Literal["ct", "mri", "none"] = "mri"
    window: tuple[float, float] = (-160.0, 240.0)
    scaled_to: tuple[float, float] = (0.0, 1.0)

    @model_validator(mode="after")
    def _window_ordered(self) -> IntensityConfig:
        if self.window[0] >= self.window[1]:
            raise ValueError("window must be [low, high] with low < high")
        if self.scaled_to[0] >= self.scaled_to[1]:
            raise ValueError("scaled_to must be [low, high] with low < high")
        return self


class PreprocessingConfig(Section):
    """Deterministic preprocessing shared by training, validation and inference.

    2D images are resized to ``spatial_size`` (height, width); 3D volumes are reoriented, resampled to ``spacing``
    (``auto``: the median spacing of the training cases), normalised and cropped to the foreground.
    """

    spatial_size: tuple[PositiveInt, PositiveInt] = (256, 256)
    # 2D colour: shades_of_gray divides each channel by the image's illuminant estimate, the Minkowski p-norm mean of
    # the channel (Finlayson & Trezzi 2004; p 6 by default)
    color_constancy: Literal["none", "shades_of_gray"] = "none"
    color_constancy_power: Annotated[float, Field(ge=1.0)] = 6.0
    orientation: Annotated[str, Field(pattern=r"^[LRAPSI]{3}$")] = "RAS"
    spacing: tuple[PositiveFloat, PositiveFloat, PositiveFloat] | Literal["auto"] | None = None
    intensity: IntensityConfig = Field(default_factory=IntensityConfig)
    crop_foreground: bool = True
    patch_size: tuple[PositiveInt, PositiveInt, PositiveInt] = (96, 96, 96)


class AugmentationConfig(Section):
    """Random augmentation applied to image and mask in sync (training only)."""

    enabled: bool = True
    flip_prob: Probability = 0.5
    rotate90_prob: Probability = 0.5
    affine_prob: Probability = 0.5
    rotate_degrees: Annotated[float, Field(ge=0.0, le=180.0)] = 30.0
    scale_range: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.15
    color_prob: Probability = 0.5
    brightness: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.15
    contrast_gamma: tuple[PositiveFloat, PositiveFloat] = (0.8, 1.25)
    channel_scale: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.1
    noise_prob: Probability = 0.15
    noise_std: NonNegativeFloat = 0.02


class ModelConfig(Section):
    """Network architecture (resolved through :mod:`medseg.registry`)."""

    name: str = "unet"
    in_channels: PositiveInt = 3
    out_channels: PositiveInt = 1
    args: dict[str, Any] = Field(default_factory=dict)
    checkpoint: Path | None = None

    @field_validator("name")
    @classmethod
    def _known_network(cls, name: str) -> str:
        return _known_name(name, NETWORKS, "network")


class LossConfig(Section):
    """Training loss (resolved through :mod:`medseg.registry`)."""

    name: str = "dice_ce"
    args: dict[str, Any] = Field(default_factory=dict)
    # weighted terms of a combined loss: {dice: 1.0, ce: 0.5} (dice_ce), {dice: 1.0, focal: 2.0} (dice_focal)
    # boundary (any loss): + weight * MONAI's BoundaryLoss, the predicted probabilities times the distance (voxels) to
    # the labelled border
    weights: dict[Literal["dice", "ce", "bce", "focal", "boundary"], NonNegativeFloat] | None = None

    @field_validator("name")
    @classmethod
    def _known_loss(cls, name: str) -> str:
        return _known_name(name, LOSSES, "loss")


class OptimizerConfig(Section):
    """Optimiser and its hyper-parameters."""

    name: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: PositiveFloat = 1e-3
    weight_decay: NonNegativeFloat = 1e-4


class ScheduleConfig(Section):
    """Learning-rate schedule: cosine (linear warm-up), poly and constant step every iteration; plateau lowers the rate
    when validation Dice stops rising."""

    name: Literal["cosine", "poly", "plateau", "constant"] = "cosine"
    warmup_epochs: NonNegativeInt = 2
    end_lr: NonNegativeFloat = 0.0
    poly_exponent: PositiveFloat = 0.9  # poly: lr * (1 - step / total) ** exponent, as nnU-Net
    plateau_factor: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.5  # plateau: lr * factor when validation Dice stalls
    plateau_patience: NonNegativeInt = 2  # validation rounds without improvement before lowering the lr
    # epochs: cosine / poly run over training.epochs; max_minutes: over the epochs that fit training.max_minutes,
    # timed on the first epochs (never more than training.epochs), so a time budget ends with an annealed rate
    length: Literal["epochs", "max_minutes"] = "epochs"


class TrainingConfig(Section):
    """Training loop settings."""

    epochs: PositiveInt = 40
    batch_size: PositiveInt = 8
    samples_per_volume: PositiveInt = 2
    val_every: PositiveInt = 1
    early_stopping_patience: PositiveInt | None = 15
    # the model kept as model/best.pt: the best validation epoch, or the final one (nnU-Net's choice: a schedule that
    # ends annealed ends on its best weights, and the best of a few noisy validation epochs is partly luck)
    keep: Literal["best", "final"] = "best"
    # train: fit on the training split; train_val: on the training and validation splits together (nnU-Net's "all"
    # fold), with the final epoch kept: validation Dice is then measured on cases the network trains on
    fit_on: Literal["train", "train_val"] = "train"
    # auto: time fp32 against native bf16 (the GPU's mixed precision on CUDA) and keep the faster; true: bf16 where
    # native, untimed; emulated bf16 is never used
    bf16: bool | Literal["auto"] = "auto"
    # channels_last / contiguous, or auto: both timed (with the bf16 candidates) on real steps at the start of
    # training; the fastest is kept (the choice and the timings are logged as MLflow params)
    memory_format: Literal["auto", "contiguous", "channels_last"] = "contiguous"
    # torch.compile the training step (inductor; a C++ compiler on CPUs): on a 2-core AVX512-BF16 EPYC 1.16-1.21x the
    # channels-last + bf16 step after ~1 min of compiling (BENCHMARKS.md); where compiling fails, training goes on
    # without it (a warning, MLflow tag compiled: false). Validation and inference stay eager
    compile: bool = False
    max_minutes: PositiveFloat | None = None
    num_threads: PositiveInt | None = None
    deterministic: bool = False
    # k-fold cross-validation over the non-test cases (folds recorded in splits.json); None: one train/val split
    folds: Annotated[int, Field(ge=2)] | None = None
    device: Annotated[str, Field(pattern=DEVICE_PATTERN)] = "auto"  # auto = CUDA when available

    @model_validator(mode="after")
    def _selection_needs_held_out_cases(self) -> TrainingConfig:
        if self.fit_on == "train":
            return self
        held_out = "fit_on: train_val trains on the validation cases"
        problems = []
        if self.keep == "best":
            problems.append(f"keep: best picks the best validation epoch, but {held_out}; set keep: final")
        if self.early_stopping_patience is not None:
            problems.append(f"early_stopping_patience: stops on validation Dice, but {held_out}; set null")
        if self.folds is not None:
            problems.append(f"folds: cross-validation holds each fold out, but {held_out}; set fit_on: train")
        if problems:
            raise ValueError("; ".join(problems))
        return self


class EvaluationConfig(Section):
    """Test-set metrics."""

    split: Literal["test", "val"] = "test"
    threshold: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.5
    jaccard_threshold: Probability = 0.65


class PostprocessingConfig(Section):
    """Mask clean-up. ``auto`` keeps an enabled step only if it improves validation Dice."""

    mode: Literal["auto", "on", "off"] = "auto"
    fill_holes: bool = True

    @field_validator("mode", mode="before")
    @classmethod
    def _yaml_booleans(cls, value: Any) -> Any:
        """YAML 1.1 reads a bare ``on``/``off`` as a boolean: take it as meant."""
        return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value

    largest_component: bool = True
    remove_small_objects: bool = True
    min_size: PositiveInt = 64
    opening: bool = False
    closing: bool = False
    radius: PositiveInt = 2


class InferenceConfig(Section):
    """How a trained network is applied: sliding window (3D) with Gaussian blending, optional mirror TTA."""

    roi_size: tuple[PositiveInt, PositiveInt, PositiveInt] | None = None
    overlap: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.5
    sw_batch_size: PositiveInt = 2
    blend_mode: Literal["gaussian", "constant"] = "gaussian"
    tta: bool = False
    # onnxruntime: the trained network exported in memory and run by ONNX Runtime; torch: PyTorch with
    # memory_format and bf16 below; auto: each of those timed on the working shape when the predictor is built (CPU;
    # bf16 ones only with bf16: true), the fastest kept and logged (CUDA: torch)
    backend: Literal["auto", "torch", "onnxruntime"] = "auto"
    memory_format: Literal["contiguous", "channels_last"] = "contiguous"  # torch backend
    # torch backend on a CPU with native bf16: bf16 autocast (probabilities move in the third digit); never emulated
    bf16: bool = False
    save_probabilities: bool = False
    device: Annotated[str, Field(pattern=DEVICE_PATTERN)] = "auto"  # auto = CUDA when available
    max_voxels: PositiveInt = 1_000_000_000  # larger inputs are refused from their header, before reading voxels


class PredictionConfig(Section):
    """Predict stage: where to read images and write masks and overlays."""

    input: Path | None = None
    output_dir: Path | None = None
    overlays: bool = True
    max_overlays: NonNegativeInt = 24
    # mask formats (3D): input (the scan's own), nifti, nrrd, mha, seg.nrrd (3D Slicer), dicom-seg (DICOM inputs)
    formats: list[Literal["input", "nifti", "nrrd", "mha", "seg.nrrd", "dicom-seg"]] = Field(default_factory=list)
    statistics: bool = False  # statistics.csv: volume, intensities, bounding box, components per case and label
    uncertainty: bool = False  # predictive entropy maps and a mean-entropy column in summary.csv
    meshes: bool = False  # one surface mesh per label per case (3D)
    mesh_format: Literal["stl", "obj", "ply"] = "stl"
    mesh_space: Literal["lps", "ras"] = "lps"


class TrackingConfig(Section):
    """MLflow tracking. ``uri`` defaults to ``$MLFLOW_TRACKING_URI`` or a sqlite store under mlruns/."""

    enabled: bool = True
    uri: str | None = None
    experiment: str | None = None
    run_name: str | None = None
    registered_model: str | None = None


class PipelineConfig(Section):
    """A whole pipeline: data -> train -> evaluate -> predict."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
    description: str = ""
    seed: NonNegativeInt = 42
    spatial_dims: Literal[2, 3] = 2
    stages: list[Literal["train", "evaluate", "predict"]] = Field(default_factory=lambda: list(STAGES))
    output_root: Path = Path("mlruns/runs")
    data: DataConfig = Field(default_factory=DataConfig)
    preprocessing: PreprocessingConfig = Field(default_factory=PreprocessingConfig)
    augmentation: AugmentationConfig = Field(default_factory=AugmentationConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    postprocessing: PostprocessingConfig = Field(default_factory=PostprocessingConfig)
    inference: InferenceConfig = Field(default_factory=InferenceConfig)
    prediction: PredictionConfig = Field(default_factory=PredictionConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    @field_validator("stages")
    @classmethod
    def _stages_unique_and_ordered(cls, stages: list[str]) -> list[str]:
        if not stages:
            raise ValueError("list at least one stage of train, evaluate, predict")
        if len(set(stages)) != len(stages):
            raise ValueError("a stage is listed twice")
        return sorted(stages, key=STAGES.index)

    @model_validator(mode="after")
    def _labels_fit_the_network(self) -> PipelineConfig:
        from medseg.labels import label_problems

        problems = label_problems(self)
        if problems:
            raise ValueError("; ".join(problems))
        mapping = self.data.label_mapping
        if self.data.regions:
            return self
        if mapping and max(mapping.values()) + 1 != self.model.out_channels:
            raise ValueError(
                f"data.label_mapping has {max(mapping.values()) + 1} classes (with background) but "
                f"model.out_channels is {self.model.out_channels}"
            )
        if not mapping and self.model.out_channels != 1:
            raise ValueError("model.out_channels > 1 needs data.label_mapping (raw label -> class index)")
        return self

    @model_validator(mode="after")
    def _color_constancy_on_rgb(self) -> PipelineConfig:
        if self.preprocessing.color_constancy != "none" and (self.spatial_dims != 2 or self.model.in_channels != 3):
            raise ValueError(
                f"preprocessing.color_constancy: {self.preprocessing.color_constancy} needs 2D RGB images "
                f"(spatial_dims 2, model.in_channels 3), not spatial_dims {self.spatial_dims} with "
                f"{self.model.in_channels} channel(s)"
            )
        return self

    @model_validator(mode="after")
    def _schedule_length_has_a_budget(self) -> PipelineConfig:
        if self.schedule.length == "max_minutes" and self.training.max_minutes is None:
            raise ValueError("schedule.length: max_minutes needs training.max_minutes (the budget to fit)")
        return self

    @model_validator(mode="after")
    def _model_source_for_inference_only(self) -> PipelineConfig:
        if "train" not in self.stages and self.model.checkpoint is None:
            raise ValueError("without the train stage, set model.checkpoint to a trained run folder or .pt file")
        return self

    def to_dict(self) -> dict[str, Any]:
        """The resolved configuration as plain YAML/JSON-compatible data."""
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        """The resolved configuration as YAML text."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def with_values(self, values: dict[str, Any]) -> PipelineConfig:
        """A new, validated configuration with dotted keys replaced (``{"training.epochs": 5}``)."""
        if not values:
            return self
        raw = self.to_dict()
        for key, value in values.items():
            *parents, last = key.split(".")
            section = raw
            for part in parents:
                if section.get(part) is None:  # a key under an unset mapping (loss.weights: null)
                    section[part] = {}
                section = section[part]
            section[last] = list(value) if isinstance(value, tuple) else value
        return PipelineConfig.model_validate(raw)


def _known_name(name: str, registry: dict[str, Any], kind: str) -> str:
    key = name.lower()
    if key not in registry:
        raise ValueError(f"unknown {kind} {name!r}; choose one of {', '.join(sorted(registry))}")
    return key


# --------------------------------------------------------------------------------------------------
# Loading, merging and overriding raw YAML
# --------------------------------------------------------------------------------------------------

Provenance = dict[tuple[str, ...], str]
_SHORT = reprlib.Repr()  # (keyword arguments need Python 3.12)
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxtuple, _SHORT.maxdict, _SHORT.maxstring, _SHORT.maxother = 2, 6, 6, 6, 80, 80


def read_yaml(path: Path) -> dict[str, Any]:
    """Read one YAML mapping with ``yaml.safe_load``; errors name the file and line."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read ({exc.__class__.__name__}: {exc})") from None
    try:
        content = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}:{where}: invalid YAML: {problem}") from None
    if content is None:
        return {}
    if not isinstance(content, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level, got {type(content).__name__}")
    return content


def _merge(base: dict, update: dict, source: str | None, provenance: Provenance, prefix: tuple[str, ...] = ()) -> dict:
    """Deep-merge ``update`` into a copy of ``base``; mappings merge, everything else (and an empty mapping, as in
    ``--set model.args={}``) replaces.

    Records in ``provenance`` which source set each key (``source=None``: already recorded).
    """
    merged = dict(base)
    for key, value in update.items():
        path = (*prefix, str(key))
        if isinstance(value, dict) and value and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value, source, provenance, path)
        else:
            merged[key] = value
            if source is not None:
                for known in [p for p in provenance if p[: len(path)] == path]:
                    del provenance[known]
        if source is not None:
            provenance[path] = source
    return merged


def _load_with_presets(path: Path, provenance: Provenance, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    resolved = path.resolve()
    if resolved in seen:
        chain = " -> ".join(str(p) for p in (*seen, resolved))
        raise ConfigError(f"{path}: extends itself in a cycle ({chain})")
    raw = read_yaml(path)
    presets = raw.pop("extends", [])
    if isinstance(presets, str):
        presets = [presets]
    if not isinstance(presets, list) or not all(isinstance(p, str) for p in presets):
        raise ConfigError(f"{path}: extends: expected a preset path or a list of paths")
    merged: dict[str, Any] = {}
    for preset in presets:
        preset_path = (path.parent / preset) if not Path(preset).is_absolute() else Path(preset)
        if not preset_path.is_file():
            raise ConfigError(f"{path}: extends: preset {preset_path} not found")
        # the preset's own keys were recorded with their files while it loaded
        merged = _merge(merged, _load_with_presets(preset_path, provenance, (*seen, resolved)), None, provenance)
    return _merge(merged, raw, str(path), provenance)


def parse_override(text: str) -> tuple[tuple[str, ...], Any]:
    """Parse ``key.path=value``; the value is read as YAML (numbers, booleans, lists)."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {text}: expected key.path=value, e.g. training.epochs=5")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        parsed = value
    return tuple(key.split(".")), parsed


def apply_overrides(raw: dict[str, Any], overrides: list[str], provenance: Provenance) -> dict[str, Any]:
    """Apply ``--set`` overrides to a merged raw mapping."""
    for text in overrides:
        path, value = parse_override(text)
        update: dict[str, Any] = value
        for part in reversed(path):
            update = {part: update}
        raw = _merge(raw, update, f"--set {text}", provenance)
    return raw


def _allowed_keys(loc: tuple[str | int, ...]) -> list[str]:
    model: type[BaseModel] | None = PipelineConfig
    for part in loc[:-1]:
        field = model.model_fields.get(str(part)) if model else None
        annotation = field.annotation if field else None
        model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
        if model is None:
            return []
    return list(model.model_fields) if model else []


def _field_path(loc: tuple[str | int, ...]) -> tuple[str, ...]:
    """The config key path of an error location, without pydantic's union-member tags (``bool``, ``literal[...]``);
    a mapping of sections (``data.labels``) keeps its key and goes on into the section."""
    model: type[BaseModel] | None = PipelineConfig
    path: list[str] = []
    values_of: type[BaseModel] | None = None  # the section type of a mapping whose key comes next
    for part in loc:
        if values_of is not None:
            path.append(str(part))
            model, values_of = values_of, None
            continue
        if model is not None:
            field = model.model_fields.get(str(part))
            if field is None:
                path.append(str(part))  # an unknown key: keep it, the error is about it
                break
            annotation = field.annotation
            model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
            values_of = _mapped_section(annotation)
            path.append(str(part))
        elif isinstance(part, int):
            path.append(str(part))  # an index into a list or tuple
        # other parts after a non-model field are union-member tags: dropped
    return tuple(path)


def _mapped_section(annotation: Any) -> type[BaseModel] | None:
    """``S`` for a ``dict[K, S] | None`` field whose values are sections."""
    import typing

    for candidate in (annotation, *typing.get_args(annotation)):
        if typing.get_origin(candidate) is dict:
            value = typing.get_args(candidate)[1]
            if isinstance(value, type) and issubclass(value, BaseModel):
                return value
    return None


def _describe(errors: list[dict[str, Any]], provenance: Provenance, default_source: str) -> str:
    """One line for the first invalid key, merging the alternatives of a union field."""
    first = errors[0]
    loc = _field_path(first["loc"])
    source = default_source
    for depth in range(len(loc), 0, -1):
        if loc[:depth] in provenance:
            source = provenance[loc[:depth]]
            break
    key = ".".join(loc)
    if first["type"] == "extra_forbidden":
        allowed = _allowed_keys(loc)
        hint = difflib.get_close_matches(loc[-1], allowed, n=1)
        suggestion = f"; did you mean {hint[0]!r}?" if hint else f"; allowed keys: {', '.join(allowed)}"
        return f"{source}: {key}: unknown key{suggestion}"
    messages = []
    for error in errors:
        if _field_path(error["loc"]) == loc:
            message = error["msg"].removeprefix("Value error, ")
            if message not in messages:
                messages.append(message)
    got = first.get("input")
    # reprlib: a value built from YAML aliases can be enormous (a "billion laughs" list): show its start only
    shown = "" if isinstance(got, dict) or first["type"] == "missing" else f" (got {_SHORT.repr(got)})"
    return f"{source}: {key + ': ' if key else ''}{', or '.join(messages)}{shown}"


def load_config(path: str | Path, overrides: list[str] | None = None) -> PipelineConfig:
    """Load, merge, override and validate a pipeline file.

    Args:
        path: the pipeline YAML file.
        overrides: ``key.path=value`` strings, applied after the file and its presets.

    Returns:
        The validated configuration, with ``data.root`` filled from ``$MEDSEG_DATA_ROOT`` when unset.

    Raises:
        ConfigError: one line naming the file (or override) and key at fault.
    """
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder; expected a pipeline YAML file")
    provenance: Provenance = {}
    raw = _load_with_presets(path, provenance)
    raw = apply_overrides(raw, overrides or [], provenance)
    raw.setdefault("name", path.stem)
    data = raw.get("data", {})
    if os.environ.get(DATA_ROOT_ENV) and isinstance(data, dict) and data.get("root") is None:
        raw["data"] = {**data, "root": os.environ[DATA_ROOT_ENV]}  # the environment fills an unset data.root
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_describe(exc.errors(), provenance, str(path))) from None
