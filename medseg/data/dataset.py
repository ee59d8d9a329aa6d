"""Resolve the configured dataset (real, or the embedded synthetic set), check it and split it.

:func:`prepare_data` never changes the configuration: what it resolves from the data (the target spacing, the
synthetic demo's epochs) comes back in :attr:`PreparedData.resolved`, for the pipeline configuration's ``with_values``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from medseg.config.schema import DATA_ROOT_ENV, SplitConfig
from medseg.core.errors import DataError
from medseg.data.check import CheckReport
from medseg.data.datalist import build_datalist
from medseg.data.image_checks import DatalistReport
from medseg.data.records import Record, subset
from medseg.data.settings import DataSettings
from medseg.data.splits import Splits, load_or_create_folds, load_or_create_splits
from medseg.data.volume_checks import spacing_in_orientation

log = logging.getLogger(__name__)

SYNTHETIC_NAME = "synthetic-dermoscopy"
SPLITS_ROOT = Path("data/splits")


@dataclass
class PreparedData:
    """A checked datalist with its split, the facts that identify it, and the values resolved from it."""

    name: str
    root: Path
    records: list[Record]
    splits: Splits
    splits_path: Path
    fingerprint: str
    synthetic: bool
    report: DatalistReport
    resolved: dict[str, Any] = field(default_factory=dict)  # dotted config key -> value
    check: CheckReport | None = None  # what the data check found (cases left out under data.on_bad_case: skip)
    folds: list[list[str]] | None = None  # cross-validation: the non-test cases in folds

    def subset(self, split: str) -> list[Record]:
        """The records of one split, in split order."""
        return subset(self.records, self.splits[split])

    def subset_ids(self, ids: list[str]) -> list[Record]:
        """The records with these ids, in that order."""
        return subset(self.records, ids)

    def for_fold(self, fold: int) -> PreparedData:
        """The same data with fold ``fold`` as the validation split and the other folds as the training split."""
        if not self.folds:
            raise DataError("no folds: set training.folds for cross-validation")
        train = sorted(i for k, f in enumerate(self.folds) if k != fold for i in f)
        splits = {"train": train, "val": list(self.folds[fold]), "test": list(self.splits["test"])}
        return replace(self, splits=splits)


def _splits(split_cfg: SplitConfig, seed: int, name: str, records: list[Record]) -> tuple[Splits, Path]:
    splits_path = split_cfg.file or SPLITS_ROOT / name / "splits.json"
    splits, created = load_or_create_splits(
        splits_path, [r["id"] for r in records], split_cfg.val_fraction, split_cfg.test_fraction, seed, split_cfg.tiny
    )
    if split_cfg.tiny and splits["val"] == splits["test"]:
        log.warning(
            "Tiny data set: validation and test share %s; the numbers are a smoke test, not accuracy", splits["test"]
        )
    log.info(
        "%s split %s: train %d, val %d, test %d (%s)",
        "Created" if created else "Reusing",
        splits_path,
        len(splits["train"]),
        len(splits["val"]),
        len(splits["test"]),
        name,
    )
    return splits, splits_path


def dataset_folder(settings: DataSettings) -> Path:
    """The configured dataset folder (``data.root / data.dataset_dir``); DataError if it is not set or missing."""
    data = settings.data
    if data.root is None:
        raise DataError(
            f"data.root is not set and ${DATA_ROOT_ENV} is empty; point one of them at the folder "
            f"holding {data.dataset_dir or 'the dataset'}/"
        )
    folder = Path(data.root) / data.dataset_dir
    if not folder.is_dir():
        raise DataError(
            f"{folder}: dataset folder not found (data.root={data.root}, data.dataset_dir={data.dataset_dir!r})"
        )
    return folder


def _synthetic_folder(settings: DataSettings) -> tuple[Path, dict[str, Any]]:
    """The embedded synthetic set (generated once) and the demo's epoch cap."""
    from medseg.data.synthetic import generate_dermoscopy_dataset

    syn = settings.data.synthetic
    height, width = syn.image_size
    kind = "" if syn.kind == "lesion" else f"-{syn.kind}"
    folder = syn.cache_dir / f"{SYNTHETIC_NAME}{kind}-n{syn.num_cases}-s{syn.seed}-{height}x{width}"
    log.warning(
        "No dataset configured (data.root / $%s unset): using the SYNTHETIC dermoscopy set "
        "(%d generated cases) in %s. Results say nothing about real images.",
        DATA_ROOT_ENV,
        syn.num_cases,
        folder,
    )
    resolved: dict[str, Any] = {}
    if syn.epochs is not None and syn.epochs < settings.epochs:
        log.warning("Synthetic demo: training.epochs %d -> data.synthetic.epochs %d", settings.epochs, syn.epochs)
        resolved["training.epochs"] = syn.epochs
    generate_dermoscopy_dataset(
        folder, num_cases=syn.num_cases, image_size=syn.image_size, seed=syn.seed, multiclass=syn.kind == "multiclass"
    )
    return folder, resolved


def median_spacing(records: list[Record], axcodes: str) -> tuple[float, float, float]:
    """Median voxel spacing of the cases' first image, per axis of the target orientation (from headers)."""
    from medseg.imageio.headers import read_header

    spacings = np.array([spacing_in_orientation(read_header(Path(r["image"][0])).affine, axcodes) for r in records])
    median = np.median(spacings, axis=0)
    return (float(median[0]), float(median[1]), float(median[2]))


def _uses_synthetic(settings: DataSettings) -> bool:
    return settings.spatial_dims == 2 and settings.data.root is None and settings.data.synthetic.fallback


def data_folder(settings: DataSettings) -> Path:
    """The folder the pipeline's cases are in: the configured dataset, or the embedded synthetic set."""
    return _synthetic_folder(settings)[0] if _uses_synthetic(settings) else dataset_folder(settings)


INTENSITY_CHANNELS = "preprocessing.intensity.channels"  # the kinds a dataset's channel names choose (nnU-Net)
REGION_KEYS = ("data.regions", "data.region_order", "model.out_channels")  # taken together, or not at all


def _described(settings: DataSettings, values: dict[str, Any]) -> dict[str, Any]:
    """The values a dataset's own description gives (label names, the ignore label, regions with their order and
    the model's channels for them) that the configuration leaves unset."""
    data = settings.data
    remapped = bool(data.label_mapping or data.foreground_labels or data.regions)  # raw names then name no class
    unset = {
        "data.labels": data.labels is None and not remapped,
        "data.ignore_label": data.ignore_label is None,
        **{key: not remapped for key in REGION_KEYS},
    }
    taken = {key: value for key, value in values.items() if unset.get(key, False)}
    if taken:
        log.info("From the dataset's description: %s", ", ".join(f"{k}={v}" for k, v in taken.items()))
    return taken


def described_intensity(settings: DataSettings, kinds: list[str] | None, train: list[Record]) -> dict[str, Any]:
    """``preprocessing.intensity`` as the dataset's channel names choose it (one kind per channel, nnU-Net's), where
    the pipeline leaves it unset; a "CT" channel is clipped to the 0.5-99.5 percentiles of the training cases'
    foreground intensities and z-scored with their mean and standard deviation (measured here, 3D)."""
    if not kinds:
        return {}
    if "intensity" in settings.preprocessing.model_fields_set:
        log.info("Intensity normalisation: preprocessing.intensity as configured (the dataset's channel names unused)")
        return {}
    intensity: dict[str, Any] = {"kind": kinds[0]} if len(set(kinds)) == 1 else {"kind": "none", "channels": kinds}
    if "ct" in kinds and settings.spatial_dims == 3:
        from medseg.planning.fingerprint import fingerprint_volumes

        channel = kinds.index("ct")
        stats = fingerprint_volumes(train, modality="ct").foreground_intensity[channel]
        low, high, mean, std = stats["p00_5"], stats["p99_5"], stats["mean"], stats["std"]
        high = max(high, low + 1e-3)  # a constant foreground: a window all the same
        intensity["window"] = [round(low, 4), round(high, 4)]
        intensity["scaled_to"] = [round((low - mean) / std, 4), round((high - mean) / std, 4)]
        if kinds.count("ct") > 1:
            log.warning("Several CT channels: all are windowed with channel %d's foreground statistics", channel)
        log.info(
            "CT normalisation (channel %d): clip to the training foreground's 0.5-99.5 percentiles %.4g..%.4g, "
            "z-score with mean %.4g, sd %.4g",
            channel,
            low,
            high,
            mean,
            std,
        )
    log.info("Intensity normalisation from the dataset's channel names: %s", ", ".join(kinds))
    return {"preprocessing.intensity": intensity}


def prepare_data(settings: DataSettings) -> PreparedData:
    """Find, check and split the dataset; the split file is created once and then reused."""
    synthetic = _uses_synthetic(settings)
    if synthetic:
        folder, resolved = _synthetic_folder(settings)
        name = SYNTHETIC_NAME
    else:
        folder, resolved, name = dataset_folder(settings), {}, settings.data.name
    datalist = build_datalist(settings, folder)
    resolved.update(_described(settings, datalist.check.resolved))
    seed = settings.seed if settings.data.split.seed is None else settings.data.split.seed
    splits, splits_path = _splits(settings.data.split, seed, name, datalist.records)
    folds = None
    if settings.folds:
        folds, created = load_or_create_folds(splits_path, splits, settings.folds, seed)
        log.info(
            "%s %d folds in %s: %s cases",
            "Created" if created else "Reusing",
            len(folds),
            splits_path,
            "/".join(str(len(f)) for f in folds),
        )
    kinds = datalist.check.resolved.get(INTENSITY_CHANNELS)
    resolved.update(described_intensity(settings, kinds, subset(datalist.records, splits["train"])))
    if settings.spatial_dims == 3 and settings.preprocessing.spacing == "auto":
        spacing = median_spacing(subset(datalist.records, splits["train"]), settings.preprocessing.orientation)
        resolved["preprocessing.spacing"] = spacing
        log.info("Target spacing (median of the training cases): %s mm", " x ".join(f"{v:.3g}" for v in spacing))
    return PreparedData(
        name=name,
        root=folder,
        records=datalist.records,
        splits=splits,
        splits_path=splits_path,
        fingerprint=datalist.fingerprint,
        synthetic=synthetic,
        report=datalist.report,
        resolved=resolved,
        check=datalist.check,
        folds=folds,
    )
