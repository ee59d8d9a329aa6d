"""The ``nnunet`` layout, 2D and 3D: nnU-Net v2 raw data as its ``documentation/dataset_format.md`` defines it.

``imagesTr/<case>_<4-digit channel><file_ending>`` and ``labelsTr/<case><file_ending>``. ``dataset.json`` (optional
for 3D volumes, where any volume ending is read) gives ``file_ending``, ``channel_names`` (one entry per input
channel; a 2D RGB image is one ``_0000.png`` file with three entries) and ``labels`` (name -> value: background 0,
the others consecutive, ``ignore`` the highest). The label names become ``data.labels`` and ``ignore`` becomes
``data.ignore_label`` where the pipeline leaves them unset; a name given a list of values is an nnU-Net region, which
medseg reads through ``data.regions`` (set it in the pipeline). ``overwrite_image_reader_writer`` is accepted: medseg
reads each format with its own readers.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from medseg.core.errors import DataError
from medseg.data.layouts.base import (
    Cases,
    Layout,
    LayoutSettings,
    is_nnunet_description,
    labels_index,
    make_record,
    read_json,
)
from medseg.data.records import Finding, Record
from medseg.imageio.formats import IMAGE_2D_SUFFIXES, VOLUME_SUFFIXES, volume_suffix

IMAGES_DIR = "imagesTr"
_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


def _ending(name: str, spatial_dims: int) -> str:
    """The file ending of an image name: a volume ending (3D) or a 2D image suffix."""
    if spatial_dims == 3:
        return volume_suffix(name)
    lower = name.lower()
    return next((name[len(name) - len(s) :] for s in IMAGE_2D_SUFFIXES if lower.endswith(s)), "")


def described_labels(path: Path, labels: Any) -> dict[str, Any]:
    """``data.labels`` / ``data.ignore_label`` from a dataset.json ``labels`` mapping, checked as nnU-Net does:
    background 0, the other values consecutive, ``ignore`` the highest."""
    if not isinstance(labels, dict) or not labels:
        raise DataError(f'{path}: \'labels\' must map label names to values, e.g. {{"background": 0, "tumour": 1}}')
    plain = {name: value for name, value in labels.items() if isinstance(value, int) and not isinstance(value, bool)}
    regions = [name for name, value in labels.items() if isinstance(value, list)]
    wrong = [name for name in labels if name not in plain and name not in regions]
    if wrong:
        raise DataError(f"{path}: labels.{wrong[0]} must be an integer value (or a list of values for a region)")
    if plain.get("background") != 0:
        raise DataError(f"{path}: labels.background must be 0 (nnU-Net's background)")
    values = sorted(plain.values())
    if values != list(range(len(values))):
        raise DataError(f"{path}: label values must be consecutive from 0 (got {', '.join(map(str, values))})")
    resolved: dict[str, Any] = {}
    ignore = plain.get("ignore")
    if ignore is not None:
        if ignore != values[-1]:
            raise DataError(f"{path}: labels.ignore must have the highest value ({values[-1]}), not {ignore}")
        resolved["data.ignore_label"] = ignore
    names = {value: name for name, value in plain.items() if name not in ("background", "ignore")}
    if names and not regions:
        resolved["data.labels"] = names
    return resolved


class NnunetLayout(Layout):
    name = "nnunet"
    spatial_dims = (2, 3)

    def detect(self, folder: Path, settings: LayoutSettings) -> bool:
        path = folder / settings.dataset_json
        if path.is_file():
            try:
                return is_nnunet_description(read_json(path))
            except DataError:
                return False
        images = folder / IMAGES_DIR
        if settings.spatial_dims == 3:
            return images.is_dir()
        return images.is_dir() and any(_CHANNEL.match(p.name.split(".")[0]) for p in images.iterdir())

    def find(self, folder: Path, settings: LayoutSettings, findings: list[Finding] | None = None) -> Cases:
        dims, images_dir = settings.spatial_dims, folder / IMAGES_DIR
        json_path = folder / settings.dataset_json
        description = read_json(json_path) if json_path.is_file() else {}
        file_ending = description.get("file_ending")
        if file_ending is not None and (not isinstance(file_ending, str) or not file_ending):
            raise DataError(f"{json_path}: 'file_ending' must be a non-empty string like '.nii.gz'")
        if not images_dir.is_dir():
            raise DataError(f"{images_dir}: image folder not found")
        resolved = described_labels(json_path, description["labels"]) if "labels" in description else {}
        cases, endings = self._images(images_dir, file_ending, dims)
        n_channels = max(max(channels) for channels in cases.values()) + 1
        for case in sorted(cases):
            missing = [c for c in range(n_channels) if c not in cases[case]]
            if missing:
                expected = images_dir / f"{case}_{missing[0]:04d}{endings[case]}"
                raise DataError(
                    f"{images_dir}: case {case!r} is missing channel {missing[0]:04d} ({expected} not found)"
                )
        described = description.get("channel_names", description.get("modality"))
        if isinstance(described, dict) and described:
            fits = len(described) == n_channels or (dims == 2 and n_channels == 1 and len(described) == 3)
            if not fits:
                raise DataError(
                    f"{json_path}: channel_names lists {len(described)} channel(s) but {images_dir} has "
                    f"{n_channels} file(s) per case"
                )
        if settings.modalities and len(settings.modalities) != n_channels:
            raise DataError(
                f"{images_dir}: {n_channels} channel(s) per case but {len(settings.modalities)} modalities given "
                f"({', '.join(settings.modalities)})"
            )
        label_folder = folder / settings.labels_dir
        if not label_folder.is_dir():
            raise DataError(f"{label_folder}: label folder not found")
        # without a file_ending, 3D labels match by case id whatever their volume ending
        by_id = labels_index(label_folder) if file_ending is None and dims == 3 else {}
        records: list[Record] = []
        for case in sorted(cases):
            label = by_id.get(case, label_folder / f"{case}{endings[case]}")
            if not label.is_file():
                raise DataError(f"{label}: label file not found for case {case!r}")
            records.append(make_record(settings, case, [cases[case][c] for c in range(n_channels)], label))
        return Cases(records, self.name, folder, resolved=resolved)

    @staticmethod
    def _images(images_dir: Path, file_ending: str | None, dims: int) -> tuple[dict[str, dict[int, Path]], dict]:
        """case -> channel -> file, and each case's file ending."""
        cases: dict[str, dict[int, Path]] = {}
        endings: dict[str, str] = {}
        for path in sorted(images_dir.iterdir()):
            if path.name.startswith(".") or not path.is_file():
                continue
            ending = file_ending or _ending(path.name, dims)
            if not ending or not path.name.endswith(ending):
                continue
            match = _CHANNEL.match(path.name[: len(path.name) - len(ending)])
            if match is None:
                raise DataError(f"{path}: not an nnU-Net image name (expected <case>_<4-digit channel>{ending})")
            case, channel = match["case"], int(match["channel"])
            channels = cases.setdefault(case, {})
            if channel in channels:
                raise DataError(f"{path}: ambiguous image, {channels[channel].name} has the same case and channel")
            channels[channel] = path
            endings.setdefault(case, ending)
        if not cases:
            looked_for = file_ending or ", ".join(VOLUME_SUFFIXES if dims == 3 else IMAGE_2D_SUFFIXES)
            raise DataError(f"{images_dir}: no images found (looked for <case>_0000 with {looked_for})")
        return cases, endings
