"""What every dataset layout is: a :class:`Layout` reads a dataset folder as its :class:`LayoutSettings` say and
returns the :class:`Cases` it lists, none of them read yet; plus the few helpers several layouts share."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from medseg.config.schema import CaseConfig, DataConfig
from medseg.core.errors import DataError
from medseg.data.records import Finding, Record
from medseg.imageio.formats import volume_id, volume_suffix


@dataclass(frozen=True)
class LayoutSettings:
    """What a layout needs to know: the ``data`` section's naming keys and whether cases are 2D images or 3D scans.

    2D records hold one image path, 3D records a list of paths (one per channel).
    """

    spatial_dims: int
    layout: str  # data.layout: a name from the registry, or "auto"
    images_dir: str
    masks_dir: str
    mask_suffixes: tuple[str, ...]
    csv_file: str
    dataset_json: str
    labels_dir: str
    modalities: tuple[str, ...]
    cases: tuple[CaseConfig, ...]
    labels: dict[str, int] | None = None  # data.labels as name -> value (annotation files name their labels)
    cache_dir: Path = Path("data/cache")  # where label maps drawn from annotation files are kept
    line_width: float = 1.0  # pixels, for annotated lines (labelme, CVAT polylines)
    label_colors: dict[str, tuple[int, int, int]] | None = None  # data.label_colors: colour masks' name -> colour

    @classmethod
    def of(cls, data: DataConfig, spatial_dims: int) -> LayoutSettings:
        """The settings of a pipeline's ``data`` section for 2D (``spatial_dims`` 2) or 3D (3) cases."""
        return cls(
            spatial_dims=spatial_dims,
            layout=data.layout,
            images_dir=data.images_dir,
            masks_dir=data.masks_dir,
            mask_suffixes=tuple(data.mask_suffixes),
            csv_file=data.csv_file,
            dataset_json=data.dataset_json,
            labels_dir=data.labels_dir,
            modalities=tuple(data.modalities),
            cases=tuple(data.cases),
            labels=None if data.labels is None else {info.name: value for value, info in data.labels.items()},
            cache_dir=Path(data.cache_dir),
            label_colors=None if data.label_colors is None else dict(data.label_colors),
        )


@dataclass
class Cases:
    """The records a layout found, its name, the file that lists them (the folder itself for folder layouts), the
    channel count the layout declares (3D, None if it declares none) and the names of masks no case uses."""

    records: list[Record]
    layout: str
    source: Path
    channels: int | None = None
    unmatched_masks: list[str] = field(default_factory=list)
    #: configuration values the dataset's own description gives (dotted key -> value), e.g. nnU-Net's label names;
    #: the pipeline takes those its configuration leaves unset
    resolved: dict[str, Any] = field(default_factory=dict)
    #: why this layout read the folder ("data.layout: msd", or what ``auto`` found), for the check header and run log
    reason: str = ""


class Layout(ABC):
    """One way a dataset folder lists its cases. A new layout is one module with a subclass and one entry in
    :data:`medseg.data.layouts.registry.LAYOUTS`."""

    name: ClassVar[str]  # the data.layout value
    spatial_dims: ClassVar[tuple[int, ...]]  # the cases it reads: 2D images, 3D scans or both
    in_folder: ClassVar[bool] = True  # its cases are files in the dataset folder (checked to exist first)
    #: what ``detect`` found, said when ``auto`` chooses this layout ("dataset.json with channel_names ...")
    evidence: ClassVar[str] = "its files"
    #: a layout that reads any folder of images by their names: ``auto`` takes it only where no layout describing its
    #: cases in a file (a dataset.json, a CSV, annotation files) detects one
    by_content: ClassVar[bool] = False

    @abstractmethod
    def detect(self, folder: Path, settings: LayoutSettings) -> bool:
        """Whether ``folder`` looks like this layout (``data.layout: auto`` asks the layouts in registry order)."""

    @abstractmethod
    def find(self, folder: Path, settings: LayoutSettings, findings: list[Finding] | None = None) -> Cases:
        """The cases under ``folder``, none of them read.

        ``findings``: where a layout that can go on past a bad case (a 2D image without its mask) records it and
        leaves it out; without it (and for every other problem) a :class:`DataError` naming the file stops the
        search.
        """


# --------------------------------------------------------------------------------------------------
# What several layouts share
# --------------------------------------------------------------------------------------------------


def make_record(settings: LayoutSettings, case_id: str, images: list[Path], label: Path | None) -> Record:
    """A record: ``image`` is one path for 2D images, a list of paths (one per channel) for 3D scans."""
    image = str(images[0]) if settings.spatial_dims == 2 else [str(p) for p in images]
    record: Record = {"id": case_id, "image": image}
    if label is not None:
        record["label"] = str(label)
    return record


def is_nnunet_description(description: dict[str, Any]) -> bool:
    """An nnU-Net v2 ``dataset.json`` (``channel_names`` and ``file_ending``), not an MSD one (``modality``,
    ``training``)."""
    return "channel_names" in description and "file_ending" in description


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object; DataError if the file cannot be read or holds something else."""
    try:
        description = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read JSON ({exc})") from None
    if not isinstance(description, dict):
        raise DataError(f"{path}: expected a JSON object, got {type(description).__name__}")
    return description


def index_volumes(folder: Path, allow_series: bool, name: Callable[[Path], str] = volume_id) -> dict[str, Path]:
    """id (``name`` of the file) -> volume file (or DICOM series folder when ``allow_series``) in ``folder``; hidden
    names skipped."""
    index: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        if path.is_dir():
            if not allow_series:
                continue
        elif not volume_suffix(path.name):
            continue
        case = name(path)
        if case in index:
            raise DataError(f"{path}: ambiguous volume, {index[case].name} has the same id {case!r}")
        index[case] = path
    return index


def labels_index(folder: Path) -> dict[str, Path]:
    """id -> label volume in ``folder``; DataError if the folder is missing."""
    if not folder.is_dir():
        raise DataError(f"{folder}: label folder not found")
    return index_volumes(folder, allow_series=False)
