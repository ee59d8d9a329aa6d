"""The ``nnunet`` layout (3D): nnU-Net raw data, ``imagesTr/<case>_<4-digit channel><ending>`` and
``<labels_dir>/<case><ending>``; an optional ``dataset.json`` gives the ``file_ending`` (else any volume ending)
and ``channel_names`` (their count must match the files)."""

from __future__ import annotations

import re
from pathlib import Path

from medseg.core.errors import DataError
from medseg.data.layouts.base import Cases, Layout, LayoutSettings, labels_index, read_json
from medseg.data.records import Finding, Record
from medseg.imageio.formats import VOLUME_SUFFIXES, volume_suffix

IMAGES_DIR = "imagesTr"
_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


class NnunetLayout(Layout):
    name = "nnunet"
    spatial_dims = (3,)

    def detect(self, folder: Path, settings: LayoutSettings) -> bool:
        return (folder / IMAGES_DIR).is_dir()

    def find(self, folder: Path, settings: LayoutSettings, findings: list[Finding] | None = None) -> Cases:
        images_dir = folder / IMAGES_DIR
        json_path = folder / settings.dataset_json
        description = read_json(json_path) if json_path.is_file() else {}
        file_ending = description.get("file_ending")
        if file_ending is not None and (not isinstance(file_ending, str) or not file_ending):
            raise DataError(f"{json_path}: 'file_ending' must be a non-empty string like '.nii.gz'")
        if not images_dir.is_dir():
            raise DataError(f"{images_dir}: image folder not found")
        looked_for = file_ending or ", ".join(VOLUME_SUFFIXES)
        cases: dict[str, dict[int, Path]] = {}
        endings: dict[str, str] = {}
        for path in sorted(images_dir.iterdir()):
            if path.name.startswith(".") or not path.is_file():
                continue
            ending = file_ending or path.name[len(path.name) - len(volume_suffix(path.name)) :]
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
            raise DataError(f"{images_dir}: no images found (looked for <case>_0000 with {looked_for})")
        n_channels = max(max(channels) for channels in cases.values()) + 1
        for case in sorted(cases):
            missing = [c for c in range(n_channels) if c not in cases[case]]
            if missing:
                expected = images_dir / f"{case}_{missing[0]:04d}{endings[case]}"
                raise DataError(
                    f"{images_dir}: case {case!r} is missing channel {missing[0]:04d} ({expected} not found)"
                )
        described = description.get("channel_names", description.get("modality"))
        if isinstance(described, dict) and described and len(described) != n_channels:
            raise DataError(
                f"{json_path}: channel_names lists {len(described)} channel(s) but {images_dir} has {n_channels} "
                "per case"
            )
        modalities = settings.modalities
        if modalities and len(modalities) != n_channels:
            raise DataError(
                f"{images_dir}: {n_channels} channel(s) per case but {len(modalities)} modalities given "
                f"({', '.join(modalities)})"
            )
        label_folder = folder / settings.labels_dir
        if file_ending is None:
            labels = labels_index(label_folder)
        elif not label_folder.is_dir():
            raise DataError(f"{label_folder}: label folder not found")
        else:
            labels = {
                c: label_folder / f"{c}{file_ending}" for c in cases if (label_folder / f"{c}{file_ending}").is_file()
            }
        records: list[Record] = []
        for case in sorted(cases):
            if case not in labels:
                raise DataError(f"{label_folder / f'{case}{endings[case]}'}: label file not found for case {case!r}")
            images = [str(cases[case][c]) for c in range(n_channels)]
            records.append({"id": case, "image": images, "label": str(labels[case])})
        return Cases(records, self.name, folder)
