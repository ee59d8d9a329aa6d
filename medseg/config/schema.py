"""The pipeline configuration's schema: one pydantic section per stage, ``extra="forbid"`` and frozen, and the checks
that span sections (labels against the network's outputs, the schedule against the budget).

:mod:`medseg.config.loading` reads the YAML and turns validation errors into one-line messages.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from medseg.models.registry import ENCODERS, INPUT_REQUIREMENTS, LOSSES, NETWORKS

DATA_ROOT_ENV = "MEDSEG_DATA_ROOT"
DEVICE_PATTERN = r"^(auto|cpu|cuda(:[0-9]+)?)$"  # (medseg.runtime.devices resolves it; torch is not imported here)
STAGES = ("train", "postprocess", "evaluate", "predict")

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
    layout: Literal[
        "auto", "folder", "csv", "msd", "nnunet", "folders", "list", "labelme", "coco", "cvat", "cvat_masks", "volumes"
    ] = "auto"
    modalities: list[str] = Field(default_factory=list)
    cases: list[CaseConfig] = Field(default_factory=list)
    labels_dir: str = "labelsTr"
    foreground_labels: list[int] | None = None
    label_mapping: dict[int, NonNegativeInt] | None = None
    # the values of the label maps medseg writes (classes; with regions: raw label values), named
    labels: dict[PositiveInt, LabelInfo] | None = None
    # colour-coded 2D masks: name -> [r, g, b] (unset: a CVAT labelmap.txt beside the masks); see docs/2d.md
    label_colors: dict[str, tuple[NonNegativeInt, NonNegativeInt, NonNegativeInt]] | None = None
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


#: intensity normalisations: ct (window, scaled_to), mri (z-score over non-zero voxels), zscore (whole image),
#: rescale (the image's min..max onto [0, 1]), none
IntensityKind = Literal["ct", "mri", "zscore", "rescale", "none"]


class IntensityConfig(Section):
    """Intensity normalisation: CT clipped to a HU window and mapped linearly onto ``scaled_to`` (default [0, 1];
    ``medseg plan`` and nnU-Net's "CT" channels z-score with foreground statistics by mapping the window onto its
    z-scores); MRI z-scored over non-zero voxels; ``zscore`` over the whole image; ``rescale`` min..max onto [0, 1].
    ``channels``: one kind per input channel where they differ (CT + PET: ``[ct, zscore]``); CT channels use
    ``window`` and ``scaled_to``. 2D images are scaled 0..255 onto [0, 1] unless the kind is zscore or rescale or
    ``channels`` is given."""

    kind: IntensityKind = "mri"
    window: tuple[float, float] = (-160.0, 240.0)
    scaled_to: tuple[float, float] = (0.0, 1.0)
    channels: Annotated[list[IntensityKind], Field(min_length=1)] | None = None

    @model_validator(mode="after")
    def _window_ordered(self) -> IntensityConfig:
        if self.window[0] >= self.window[1]:
            raise ValueError("window must be [low, high] with low < high")
        if self.scaled_to[0] >= self.scaled_to[1]:
            raise ValueError("scaled_to must be [low, high] with low < high")
        return self

    def channel_kinds(self, channels: int) -> list[str]:
        """The kind of each of ``channels`` input channels."""
        return list(self.channels) if self.channels else [self.kind] * channels


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
    """Network architecture (resolved through :mod:`medseg.models.registry`)."""

    name: str = "unet"
    in_channels: PositiveInt = 3
    out_channels: PositiveInt = 1
    args: dict[str, Any] = Field(default_factory=dict)
    checkpoint: Path | None = None
    init_from: str | None = None  # fine-tuning: start from a run, .pt, .ts, bundle folder or runs:/ URI's weights

    @field_validator("name")
    @classmethod
    def _known_network(cls, name: str) -> str:
        return _known_name(name, NETWORKS, "network")


class LossConfig(Section):
    """Training loss (resolved through :mod:`medseg.models.registry`)."""

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
    freeze: list[Literal["encoder"]] = Field(default_factory=list)  # parts of the network that take no steps
    freeze_epochs: PositiveInt | None = None  # training.freeze ends after this many epochs; None: the whole run

    @model_validator(mode="after")
    def _freeze_epochs_need_a_freeze(self) -> TrainingConfig:
        if self.freeze_epochs is not None and not self.freeze:
            raise ValueError("freeze_epochs: set training.freeze too (freeze_epochs says how long it lasts)")
        return self

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
    # dense CRF (2D RGB; the crf extra): unary -log p, Gaussian and bilateral kernels on the image at its own size,
    # before the mask steps; defaults of Kraehenbuehl & Koltun's code and pydensecrf's README (sxy, srgb in pixels)
    dense_crf: bool = False
    crf_iterations: PositiveInt = 5
    crf_gaussian_sxy: PositiveFloat = 3.0
    crf_gaussian_compat: PositiveFloat = 3.0
    crf_bilateral_sxy: PositiveFloat = 80.0
    crf_bilateral_srgb: PositiveFloat = 13.0
    crf_bilateral_compat: PositiveFloat = 10.0


class InferenceConfig(Section):
    """How a trained network is applied: sliding window (3D) with Gaussian blending, optional mirror TTA."""

    roi_size: tuple[PositiveInt, PositiveInt, PositiveInt] | None = None
    overlap: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.5
    sw_batch_size: PositiveInt = 2
    blend_mode: Literal["gaussian", "constant"] = "gaussian"
    tta: bool = False
    # onnxruntime: the trained network exported in memory and run by ONNX Runtime; torch: PyTorch with
    # memory_format and bf16 below; auto: each of those timed on the working shape when the predictor is built (CPU;
    # bf16 ones only with bf16: true), the fastest kept and logged (CUDA: torch); openvino (opt-in, the openvino
    # extra): exported in memory and run by OpenVINO in fp32, not among auto's candidates
    backend: Literal["auto", "torch", "onnxruntime", "openvino"] = "auto"
    memory_format: Literal["contiguous", "channels_last"] = "contiguous"  # torch backend
    # torch backend on a CPU with native bf16: bf16 autocast (probabilities move in the third digit); never emulated
    bf16: bool = False
    save_probabilities: bool = False
    device: Annotated[str, Field(pattern=DEVICE_PATTERN)] = "auto"  # auto = CUDA when available
    max_voxels: PositiveInt = 1_000_000_000  # larger inputs are refused from their header, before reading voxels


class DicomwebConfig(Section):
    """Predict stage from a PACS over DICOMweb (``medseg predict --dicomweb``): what to segment, and whether the
    DICOM-SEG / RTSTRUCT go back (credentials from $MEDSEG_DICOMWEB_USER/_PASSWORD, _TOKEN or ~/.netrc)."""

    url: Annotated[str, Field(pattern=r"^https?://")]
    study: str | None = None  # a StudyInstanceUID
    series: str | None = None  # a SeriesInstanceUID
    query: dict[str, str] = Field(default_factory=dict)  # QIDO-RS filters, e.g. {Modality: CT, PatientID: "123"}
    channels: list[str] = Field(default_factory=list)  # multi-channel models: KEY=PATTERN per channel
    store: bool = False  # STOW-RS the results back
    ca_bundle: Path | None = None  # TLS: the CA bundle that signs the PACS's certificate

    @model_validator(mode="after")
    def _something_to_segment(self) -> DicomwebConfig:
        if not (self.study or self.series or self.query):
            raise ValueError("name what to segment: study, series or query")
        return self


class PredictionConfig(Section):
    """Predict stage: where to read images and write masks and overlays."""

    input: Path | None = None
    output_dir: Path | None = None
    overlays: bool = True
    max_overlays: NonNegativeInt = 24
    # mask formats (3D): input (the scan's own), nifti, nrrd, mha, seg.nrrd (3D Slicer), dicom-seg and rtstruct
    # (DICOM inputs)
    formats: list[Literal["input", "nifti", "nrrd", "mha", "seg.nrrd", "dicom-seg", "rtstruct"]] = Field(
        default_factory=list
    )
    statistics: bool = False  # statistics.csv: volume, intensities, bounding box, components per case and label
    uncertainty: bool = False  # predictive entropy maps and a mean-entropy column in summary.csv
    meshes: bool = False  # one surface mesh per label per case (3D)
    mesh_format: Literal["stl", "obj", "ply"] = "stl"
    mesh_space: Literal["lps", "ras"] = "lps"
    # an instance map per case and a row per instance in statistics.csv: each connected component of each label its
    # own id (components under min_instance_size voxels dropped; touching objects cut by a distance-transform
    # watershed with split_touching); not for a regions model
    instances: bool = False
    min_instance_size: NonNegativeInt = 10
    split_touching: bool = False
    dicomweb: DicomwebConfig | None = None  # read the series from a PACS instead of ``input``


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
    stages: list[Literal["train", "postprocess", "evaluate", "predict"]] = Field(default_factory=lambda: list(STAGES))
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
            raise ValueError("list at least one stage of train, postprocess, evaluate, predict")
        if len(set(stages)) != len(stages):
            raise ValueError("a stage is listed twice")
        if "postprocess" in stages and "train" not in stages:
            raise ValueError("postprocess chooses the steps for the model this run trains; list train too")
        if "train" in stages and "postprocess" not in stages:
            # a trained model's post-processing is decided with it (auto: chosen on validation; on/off: recorded),
            # so a pipeline written before postprocess was a stage of its own gets it
            stages = [*stages, "postprocess"]
        return sorted(stages, key=STAGES.index)

    @model_validator(mode="after")
    def _labels_fit_the_network(self) -> PipelineConfig:
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
    def _dense_crf_on_rgb(self) -> PipelineConfig:
        if self.postprocessing.dense_crf and (self.spatial_dims != 2 or self.model.in_channels != 3):
            raise ValueError(
                "postprocessing.dense_crf: the bilateral kernel needs 2D RGB images (spatial_dims 2, "
                f"model.in_channels 3), not spatial_dims {self.spatial_dims} with {self.model.in_channels} channel(s)"
            )
        return self

    @model_validator(mode="after")
    def _instances_of_classes(self) -> PipelineConfig:
        if self.prediction.instances and self.data.regions:
            raise ValueError(
                "prediction.instances: this pipeline predicts overlapping regions (data.regions), so a voxel belongs "
                "to several structures; instances need a model of classes"
            )
        if self.prediction.split_touching and not self.prediction.instances:
            raise ValueError("prediction.split_touching: cuts instances apart, so it needs prediction.instances: true")
        return self

    @model_validator(mode="after")
    def _input_fits_the_network(self) -> PipelineConfig:
        if self.model.name not in INPUT_REQUIREMENTS:
            return self
        dims, multiple = INPUT_REQUIREMENTS[self.model.name]
        if self.spatial_dims != dims:
            raise ValueError(
                f"model.name: {self.model.name} is a {dims}D network, not for spatial_dims {self.spatial_dims}"
            )
        size = list(self.preprocessing.spatial_size)
        if dims == 2 and any(side % multiple for side in size):
            fitting = [max(multiple, round(side / multiple) * multiple) for side in size]
            raise ValueError(
                f"preprocessing.spatial_size: {self.model.name} takes sides that are multiples of {multiple}, "
                f"not {size} (for example {fitting})"
            )
        return self

    @model_validator(mode="after")
    def _schedule_length_has_a_budget(self) -> PipelineConfig:
        if self.schedule.length == "max_minutes" and self.training.max_minutes is None:
            raise ValueError("schedule.length: max_minutes needs training.max_minutes (the budget to fit)")
        return self

    @model_validator(mode="after")
    def _fine_tuning_has_what_it_needs(self) -> PipelineConfig:
        if self.model.init_from and "train" not in self.stages:
            raise ValueError("model.init_from: the weights training starts from; list the train stage too")
        if self.training.freeze and self.model.name not in ENCODERS:
            raise ValueError(
                f"training.freeze: network {self.model.name} has no encoder defined to freeze "
                f"(defined for {', '.join(ENCODERS)})"
            )
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
        renamed = values.get("model.name", self.model.name).lower() != self.model.name
        if renamed and not any(key == "model.args" or key.startswith("model.args.") for key in values):
            raw["model"]["args"] = {}  # model.args belong to model.name
        for key, value in values.items():
            *parents, last = key.split(".")
            section = raw
            for part in parents:
                if section.get(part) is None:  # a key under an unset mapping (loss.weights: null)
                    section[part] = {}
                section = section[part]
            section[last] = list(value) if isinstance(value, tuple) else value
        return PipelineConfig.model_validate(raw)


def label_problems(cfg: PipelineConfig) -> list[str]:
    """Everything wrong with ``data.labels`` / ``regions`` / ``region_order`` / ``ignore_label``, all at once."""
    data, problems = cfg.data, []
    labels = data.labels or {}
    names = [info.name for info in labels.values()]
    for name in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"data.labels: the name {name!r} is given to more than one label")
    if data.ignore_label is not None and data.ignore_label in labels:
        problems.append(f"data.labels: {data.ignore_label} is data.ignore_label, not a label to name")
    if not data.regions:
        if data.region_order:
            problems.append("data.region_order: set data.regions too (region_order orders the regions)")
        classes = max(2, cfg.model.out_channels)  # with background (2 for binary)
        unknown = sorted(v for v in labels if v >= classes)
        if unknown:
            problems.append(
                f"data.labels: {', '.join(map(str, unknown))} not a class of this model (classes 1..{classes - 1}; "
                "with data.label_mapping, name the classes the raw labels map to)"
            )
        return problems  # classes left unnamed are called class_<k>
    if data.label_mapping:
        problems.append("data.regions: cannot be combined with data.label_mapping (regions are built from raw labels)")
    by_name = {info.name: value for value, info in labels.items()}
    resolved: dict[str, set[int]] = {}
    for region, members in data.regions.items():
        values = set()
        for member in members:
            if isinstance(member, str) and member not in by_name:
                known = ", ".join(sorted(by_name)) or "none (set data.labels)"
                problems.append(f"data.regions.{region}: unknown label name {member!r}; data.labels names: {known}")
            elif isinstance(member, int) and member <= 0:
                problems.append(f"data.regions.{region}: label {member} is background; list labels > 0")
            else:
                values.add(member if isinstance(member, int) else by_name[member])
        if not members:
            problems.append(f"data.regions.{region}: list at least one label")
        resolved[region] = values
    if cfg.model.out_channels != len(data.regions):
        problems.append(
            f"model.out_channels is {cfg.model.out_channels} but data.regions lists {len(data.regions)} regions "
            "(one sigmoid channel per region)"
        )
    order = data.region_order
    if order is not None:
        if sorted(order) != sorted(data.regions) or len(set(order)) != len(order):
            problems.append(
                f"data.region_order: list each region of data.regions exactly once ({', '.join(data.regions)})"
            )
            return problems
    else:
        overlapping = [
            (a, b) for i, a in enumerate(resolved) for b in list(resolved)[i + 1 :] if resolved[a] & resolved[b]
        ]
        if overlapping:
            a, b = overlapping[0]
            problems.append(
                f"data.region_order: regions {a} and {b} overlap; give the painting order, e.g. "
                f"region_order: [{', '.join(sorted(resolved, key=lambda r: -len(resolved[r])))}] (later regions win)"
            )
            return problems
        order = list(data.regions)
    for position, region in enumerate(order):
        later = set().union(*(resolved[other] for other in order[position + 1 :]))
        if resolved[region] and resolved[region] <= later:
            problems.append(f"data.region_order: region {region} is covered by later regions (never painted)")
    return problems


def _known_name(name: str, registry: dict[str, Any], kind: str) -> str:
    key = name.lower()
    if key not in registry:
        raise ValueError(f"unknown {kind} {name!r}; choose one of {', '.join(sorted(registry))}")
    return key
