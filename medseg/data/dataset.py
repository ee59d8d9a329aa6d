"""Resolve the configured dataset (real, or the embedded synthetic set), check it and split it."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from medseg.config import DATA_ROOT_ENV, PipelineConfig
from medseg.data.datalist import DatalistReport, Record, build_datalist, data_fingerprint
from medseg.data.splits import Splits, load_or_create_splits
from medseg.errors import DataError

log = logging.getLogger(__name__)

SYNTHETIC_NAME = "synthetic-dermoscopy"


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
        by_id = {r["id"]: r for r in self.records}
        return [by_id[i] for i in self.splits[split]]


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


def prepare_data(cfg: PipelineConfig) -> PreparedData:
    """Find, check and split the dataset; the split file is created once and then reused."""
    name, folder, synthetic = _dataset_folder(cfg)
    records, report = build_datalist(folder, cfg.data, in_channels=cfg.model.in_channels)
    if report.masks_with_non_binary_pixels:
        log.warning(
            "%d mask(s) hold %d non-binary pixel(s); masks are binarised at > 0",
            report.masks_with_non_binary_pixels,
            report.non_binary_pixels,
        )
    if report.unmatched_masks:
        log.warning(
            "%d mask(s) have no image and are ignored, e.g. %s", len(report.unmatched_masks), report.unmatched_masks[0]
        )
    split_cfg = cfg.data.split
    splits_path = split_cfg.file or Path("data/splits") / name / "splits.json"
    seed = cfg.seed if split_cfg.seed is None else split_cfg.seed
    splits, created = load_or_create_splits(
        splits_path, [r["id"] for r in records], split_cfg.val_fraction, split_cfg.test_fraction, seed
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
