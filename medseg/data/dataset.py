"""Resolve the configured dataset (real, or the embedded synthetic set), check it and split it."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medseg.config import DATA_ROOT_ENV, PipelineConfig
from medseg.data.datalist import DatalistReport, Record, build_datalist, data_fingerprint
from medseg.data.splits import Splits, load_or_create_splits
from medseg.errors import DataError

log = logging.getLogger(__name__)

SYNTHETIC_NAME = "synthetic-dermoscopy"


def subset(records: list[Record], ids: list[str]) -> list[Record]:
    """The records with these ids, in that order."""
    by_id = {r["id"]: r for r in records}
    return [by_id[i] for i in ids]


def _splits(cfg: PipelineConfig, name: str, records: list[Record]) -> tuple[Splits, Path]:
    split_cfg = cfg.data.split
    splits_path = split_cfg.file or Path("data/splits") / name / "splits.json"
    seed = cfg.seed if split_cfg.seed is None else split_cfg.seed
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


@dataclass
class PreparedData:
    """A checked datalist with its split and the facts that identify it."""

    name: str
    root: Path
    records: list[Record]
    splits: Splits
    splits_path: Path
    fingerprint: str
    synthetic: bool
    report: DatalistReport

    def subset(self, split: str) -> list[Record]:
        """The records of one split, in split order."""
        return subset(self.records, self.splits[split])


def _dataset_folder(cfg: PipelineConfig) -> tuple[str, Path, bool]:
    data = cfg.data
    if data.root is not None:
        folder = Path(data.root) / data.dataset_dir
        if not folder.is_dir():
            raise DataError(
                f"{folder}: dataset folder not found (data.root={data.root}, data.dataset_dir={data.dataset_dir!r})"
            )
        return data.name, folder, False
    if not data.synthetic.fallback:
        raise DataError(
            f"data.root is not set and ${DATA_ROOT_ENV} is empty; point one of them at the folder "
            f"holding {data.dataset_dir or 'the dataset'}/"
        )
    from medseg.data.synthetic import generate_dermoscopy_dataset

    syn = data.synthetic
    height, width = syn.image_size
    folder = syn.cache_dir / f"{SYNTHETIC_NAME}-n{syn.num_cases}-s{syn.seed}-{height}x{width}"
    log.warning(
        "No dataset configured (data.root / $%s unset): using the SYNTHETIC dermoscopy set "
        "(%d generated cases) in %s. Results say nothing about real images.",
        DATA_ROOT_ENV,
        syn.num_cases,
        folder,
    )
    if syn.epochs is not None and syn.epochs < cfg.training.epochs:
        log.warning("Synthetic demo: training.epochs %d -> data.synthetic.epochs %d", cfg.training.epochs, syn.epochs)
        cfg.training.epochs = syn.epochs
    generate_dermoscopy_dataset(folder, num_cases=syn.num_cases, image_size=syn.image_size, seed=syn.seed)
    return SYNTHETIC_NAME, folder, True


def spacing_in_orientation(affine: np.ndarray, axcodes: str) -> tuple[float, float, float]:
    """Voxel sizes (mm) along the axes of ``axcodes`` (e.g. RAS) for a voxel-to-RAS affine."""
    import nibabel as nib

    zooms = nib.affines.voxel_sizes(affine)
    transform = nib.orientations.ornt_transform(
        nib.orientations.io_orientation(affine), nib.orientations.axcodes2ornt(tuple(axcodes))
    )
    spacing = [0.0, 0.0, 0.0]
    for source_axis, (target_axis, _) in enumerate(transform[:3]):
        spacing[int(target_axis)] = float(zooms[source_axis])
    return (spacing[0], spacing[1], spacing[2])


def median_spacing(records: list[Record], axcodes: str) -> tuple[float, float, float]:
    """Median voxel spacing of the cases' first image, per axis of the target orientation (from headers)."""
    from medseg.data.volumes import read_volume_header

    spacings = np.array(
        [spacing_in_orientation(read_volume_header(Path(r["image"][0])).affine, axcodes) for r in records]
    )
    median = np.median(spacings, axis=0)
    return (float(median[0]), float(median[1]), float(median[2]))


def _volume_datalist(cfg: PipelineConfig) -> tuple[str, Path, list[Record], str]:
    from medseg.data.volumes import build_volume_datalist, check_volume_record, volume_fingerprint

    data = cfg.data
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
    layout = data.layout
    if layout in ("auto", "folder"):
        layout = (
            "msd"
            if (folder / data.dataset_json).is_file()
            else "csv"
            if (folder / data.csv_file).is_file()
            else "folders"
            if data.modalities
            else "nnunet"
        )
    if data.cases:
        records = [
            {
                "id": c.id,
                "image": [str(folder / p) for p in c.image],
                **({"label": str(folder / c.label)} if c.label else {}),
            }
            for c in data.cases
        ]
        for record in records:
            check_volume_record(record)
    else:
        records = build_volume_datalist(
            folder, layout, data.modalities, data.labels_dir, data.dataset_json, data.csv_file
        )
    channels = len(records[0]["image"])
    if channels != cfg.model.in_channels:
        raise DataError(
            f"{folder}: cases have {channels} image channel(s) but model.in_channels is {cfg.model.in_channels}"
        )
    _check_labels(records, data.label_mapping)
    return data.name, folder, records, volume_fingerprint(records)


def _check_labels(records: list[Record], mapping: dict[int, int] | None) -> None:
    """Read every label once before any output: DataError for values that are not class labels; a warning for
    values that ``data.label_mapping`` does not list (they become background)."""
    from medseg.data.volumes import label_values

    unmapped: dict[int, str] = {}
    for record in records:
        if record.get("label"):
            values = label_values(Path(record["label"]))
            for value in sorted(values - set(mapping or {}) - {0}) if mapping else []:
                unmapped.setdefault(value, Path(record["label"]).name)
    if unmapped:
        log.warning(
            "Label value(s) %s are not in data.label_mapping and become background (e.g. %s)",
            ", ".join(map(str, sorted(unmapped))),
            ", ".join(f"{v} in {name}" for v, name in sorted(unmapped.items())[:3]),
        )


def prepare_data(cfg: PipelineConfig) -> PreparedData:
    """Find, check and split the dataset; the split file is created once and then reused."""
    if cfg.spatial_dims == 3:
        name, folder, records, fingerprint = _volume_datalist(cfg)
        splits, splits_path = _splits(cfg, name, records)
        if cfg.preprocessing.spacing == "auto":
            cfg.preprocessing.spacing = median_spacing(subset(records, splits["train"]), cfg.preprocessing.orientation)
            log.info(
                "Target spacing (median of the training cases): %s mm",
                " x ".join(f"{v:.3g}" for v in cfg.preprocessing.spacing),
            )
        return PreparedData(
            name=name,
            root=folder,
            records=records,
            splits=splits,
            splits_path=splits_path,
            fingerprint=fingerprint,
            synthetic=False,
            report=DatalistReport(cases=len(records)),
        )
    name, folder, synthetic = _dataset_folder(cfg)
    records, report = build_datalist(folder, cfg.data, in_channels=cfg.model.in_channels)
    if report.masks_with_non_binary_pixels:
        log.warning(
            "%d mask(s) hold %d non-binary pixel(s), e.g. %s; masks are binarised at > 0",
            report.masks_with_non_binary_pixels,
            report.non_binary_pixels,
            report.non_binary_example,
        )
    if report.unmatched_masks:
        log.warning(
            "%d mask(s) have no image and are ignored, e.g. %s", len(report.unmatched_masks), report.unmatched_masks[0]
        )
    splits, splits_path = _splits(cfg, name, records)
    return PreparedData(
        name=name,
        root=folder,
        records=records,
        splits=splits,
        splits_path=splits_path,
        fingerprint=data_fingerprint(records),
        synthetic=synthetic,
        report=report,
    )
