"""The ``nnunet`` layout, 2D and 3D: nnU-Net v2 raw data as its ``documentation/dataset_format.md`` defines it.

``imagesTr/<case>_<4-digit channel><file_ending>`` and ``labelsTr/<case><file_ending>``. ``dataset.json`` (optional
for 3D volumes, where any volume ending is read) gives ``file_ending``, ``channel_names`` (one entry per input
channel; a 2D RGB image is one ``_0000.png`` file with three entries; the names choose the intensity normalisation,
see :func:`medseg.data.dataset.described_intensity`) and ``labels`` (name -> value: background 0, the others
consecutive, ``ignore`` the highest). The label names become ``data.labels`` and ``ignore`` becomes
``data.ignore_label`` where the pipeline leaves them unset; names given a list of values are nnU-Net regions, painted
in ``regions_class_order``, which become ``data.regions`` / ``data.region_order`` / ``model.out_channels``.
``overwrite_image_reader_writer`` is accepted with a warning: medseg reads each format with its own readers.

With ``findings`` (``medseg check``) every problem is recorded, one line each naming the file: the dataset.json's
keys (missing: a warning, medseg reads on; of the wrong type: an error) and labels, ``numTraining`` against the cases
found (a warning), cases missing a channel or their label file (left out).
"""

from __future__ import annotations

import json
import logging
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

log = logging.getLogger(__name__)

IMAGES_DIR = "imagesTr"
CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
#: the keys nnU-Net v2 requires in a dataset.json, and what each must be
REQUIRED_KEYS = {
    "channel_names": 'a mapping of channel index to name, e.g. {"0": "CT"}',
    "labels": 'a mapping of label names to values, e.g. {"background": 0, "tumour": 1}',
    "numTraining": "an integer (the number of training cases)",
    "file_ending": "a file ending like '.nii.gz'",
}
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")
#: nnU-Net's channel names (case-insensitive) that choose a normalisation -> medseg's ``preprocessing.intensity``
#: kind; any other name is nnU-Net's default z-score. 2D images keep medseg's 0..255 scaling (nnU-Net's rgb_to_0_1)
#: unless a name here says otherwise.
NORMALISATIONS = {"ct": "ct", "nonorm": "none", "rescale_to_0_1": "rescale", "zscore": "zscore"}


def _ending(name: str, spatial_dims: int) -> str:
    """The file ending of an image name: a volume ending (3D) or a 2D image suffix."""
    if spatial_dims == 3:
        return volume_suffix(name)
    lower = name.lower()
    return next((name[len(name) - len(s) :] for s in IMAGE_2D_SUFFIXES if lower.endswith(s)), "")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _key_fits(key: str, value: Any) -> bool:
    if key in ("channel_names", "labels"):
        return isinstance(value, dict) and bool(value)
    if key == "numTraining":
        return _is_int(value) and value >= 0
    return isinstance(value, str) and bool(value)


def description_findings(path: Path, description: dict[str, Any]) -> list[Finding]:
    """Every key problem of an nnU-Net dataset.json at once: a missing key is a warning (medseg reads on, nnU-Net
    would not), a key of the wrong type an error."""
    findings = []
    for key, expected in REQUIRED_KEYS.items():
        if key not in description:
            message = f"{path}: no '{key}' ({expected}); nnU-Net requires {', '.join(REQUIRED_KEYS)}"
            findings.append(Finding("warning", "", "dataset.json", message, str(path)))
        elif not _key_fits(key, description[key]):
            shown = json.dumps(description[key])
            shown = shown if len(shown) <= 40 else shown[:37] + "..."
            message = f"{path}: '{key}' must be {expected}, not {shown}"
            findings.append(Finding("error", "", "dataset.json", message, str(path)))
    reader = description.get("overwrite_image_reader_writer")
    if reader is not None:
        message = f"{path}: overwrite_image_reader_writer {reader!r} is not used; medseg reads each format itself"
        findings.append(Finding("warning", "", "dataset.json", message, str(path)))
    return findings


def safe_region_name(name: str) -> str:
    """A region name medseg accepts (letters, digits, ``_.-``, starting with a letter or digit)."""
    return _UNSAFE.sub("_", name).strip("_.-") or "region"


def _regions(path: Path, labels: dict[str, Any], order: Any, problems: list[str]) -> dict[str, Any]:
    """``data.regions`` / ``data.region_order`` / ``model.out_channels`` from nnU-Net regions: every label but
    background and ignore is a region (a value is a region of one value), painted in the order listed."""
    regions = {
        name: v if isinstance(v, list) else [v] for name, v in labels.items() if name not in ("background", "ignore")
    }
    if not _is_int_list(order) or len(order) != len(regions):
        problems.append(f"{path}: regions need 'regions_class_order', one label value per region ({len(regions)})")
        return {}
    safe: dict[str, list[int]] = {}
    for name, values in regions.items():
        renamed = safe_region_name(name)
        while renamed in safe:
            renamed += "_"
        if renamed != name:
            log.info(
                "%s: region %r is called %r in medseg (region names are letters, digits, _ . -)", path, name, renamed
            )
        safe[renamed] = values
    names = list(safe)
    for position, ((name, values), painted) in enumerate(zip(safe.items(), order, strict=True)):
        if painted not in values:
            problems.append(f"{path}: regions_class_order paints {painted} for region {name!r}, not one of its values")
            continue
        later = {v for other in names[position + 1 :] for v in safe[other]}
        own = sorted(v for v in values if v not in later)
        if own and own[0] != painted:
            log.warning("%s: region %r is painted as %d in medseg's label maps, not %d", path, name, own[0], painted)
    return {"data.regions": safe, "data.region_order": list(safe), "model.out_channels": len(safe)}


def _is_int_list(value: Any) -> bool:
    return isinstance(value, list) and all(_is_int(v) for v in value)


def label_problems(path: Path, labels: Any, regions_order: Any = None) -> tuple[dict[str, Any], list[str]]:
    """The values a dataset.json ``labels`` mapping gives (``data.labels`` / ``data.ignore_label``, or the regions)
    and every problem nnU-Net would refuse it for (background 0, the others consecutive, ``ignore`` the highest)."""
    if not isinstance(labels, dict) or not labels:
        return {}, []  # reported by description_findings
    problems = []
    plain = {name: value for name, value in labels.items() if _is_int(value)}
    regions = [name for name, value in labels.items() if _is_int_list(value) and value]
    for name in labels:
        if name not in plain and name not in regions:
            problems.append(f"{path}: labels.{name} must be an integer value (or a list of values for a region)")
    if plain.get("background") != 0:
        problems.append(f"{path}: labels.background must be 0 (nnU-Net's background)")
    values = sorted({*plain.values(), *(v for name in regions for v in labels[name])})
    if values != list(range(len(values))):
        problems.append(f"{path}: label values must be consecutive from 0 (got {', '.join(map(str, values))})")
    resolved: dict[str, Any] = {}
    ignore = plain.get("ignore")
    if ignore is not None:
        if values and ignore != values[-1]:
            problems.append(f"{path}: labels.ignore must have the highest value ({values[-1]}), not {ignore}")
        if ignore > 0:
            resolved["data.ignore_label"] = ignore
    if regions:
        resolved.update(_regions(path, labels, regions_order, problems))
        return resolved, problems
    names = {value: name for name, value in plain.items() if name not in ("background", "ignore")}
    if names:
        resolved["data.labels"] = names
    return resolved, problems


def channel_kinds(channel_names: Any, dims: int) -> list[str] | None:
    """The ``preprocessing.intensity`` kind of each channel that ``channel_names`` chooses, as nnU-Net does; None
    where it chooses nothing (no names, or 2D names that are not normalisations, e.g. R, G, B)."""
    if not isinstance(channel_names, dict) or not channel_names:
        return None
    names = [str(channel_names[key]) for key in sorted(channel_names, key=lambda k: int(k) if str(k).isdigit() else 0)]
    names = [name.casefold() for name in names]
    if dims == 2 and not any(name in NORMALISATIONS for name in names):
        return None
    return [NORMALISATIONS.get(name, "rescale" if name == "rgb_to_0_1" else "zscore") for name in names]


def claims_nnunet(description: dict[str, Any]) -> bool:
    """An nnU-Net dataset.json, also one that lacks keys (MSD's lists its cases in ``training``)."""
    named = "channel_names" in description or "file_ending" in description
    return is_nnunet_description(description) or (named and "training" not in description)


class _Report:
    """Where the layout's problems go: ``findings`` when given (warnings too), else the first error is raised and
    warnings are logged."""

    def __init__(self, findings: list[Finding] | None) -> None:
        self.findings = findings

    def add(self, finding: Finding) -> None:
        if self.findings is not None:
            self.findings.append(finding)
        elif finding.severity == "error":
            raise DataError(finding.message)
        else:
            log.warning("%s", finding.message)


class NnunetLayout(Layout):
    name = "nnunet"
    spatial_dims = (2, 3)
    evidence = "a dataset.json with channel_names / file_ending, or imagesTr/<case>_0000 files"

    def detect(self, folder: Path, settings: LayoutSettings) -> bool:
        path = folder / settings.dataset_json
        if path.is_file():
            try:
                return claims_nnunet(read_json(path))
            except DataError:
                return False
        images = folder / IMAGES_DIR
        if settings.spatial_dims == 3:
            return images.is_dir()
        return images.is_dir() and any(CHANNEL_FILE.match(p.name.split(".")[0]) for p in images.iterdir())

    def find(self, folder: Path, settings: LayoutSettings, findings: list[Finding] | None = None) -> Cases:
        dims, images_dir, report = settings.spatial_dims, folder / IMAGES_DIR, _Report(findings)
        json_path = folder / settings.dataset_json
        description = read_json(json_path) if json_path.is_file() else {}
        if description:
            for finding in description_findings(json_path, description):
                report.add(finding)
        file_ending = description.get("file_ending")
        file_ending = file_ending if isinstance(file_ending, str) and file_ending else None
        if not images_dir.is_dir():
            raise DataError(f"{images_dir}: image folder not found")
        resolved, problems = label_problems(
            json_path, description.get("labels"), description.get("regions_class_order")
        )
        for problem in problems:
            report.add(Finding("error", "", "labels", problem, str(json_path)))
        cases, endings = self._images(images_dir, file_ending, dims)
        n_channels = max(max(channels) for channels in cases.values()) + 1
        complete = []
        for case in sorted(cases):
            missing = [c for c in range(n_channels) if c not in cases[case]]
            if missing:
                expected = images_dir / f"{case}_{missing[0]:04d}{endings[case]}"
                message = f"{images_dir}: case {case!r} is missing channel {missing[0]:04d} ({expected} not found)"
                report.add(Finding("error", case, "missing channel", message, str(expected)))
            else:
                complete.append(case)
        described = description.get("channel_names", description.get("modality"))
        if isinstance(described, dict) and described:
            fits = len(described) == n_channels or (dims == 2 and n_channels == 1 and len(described) == 3)
            if not fits:
                message = (
                    f"{json_path}: channel_names lists {len(described)} channel(s) but {images_dir} has "
                    f"{n_channels} file(s) per case"
                )
                report.add(Finding("error", "", "channels", message, str(json_path)))
        if settings.modalities and len(settings.modalities) != n_channels:
            raise DataError(
                f"{images_dir}: {n_channels} channel(s) per case but {len(settings.modalities)} modalities given "
                f"({', '.join(settings.modalities)})"
            )
        number = description.get("numTraining")
        if _is_int(number) and number != len(cases):
            message = f"{json_path}: numTraining is {number} but {images_dir} holds {len(cases)} case(s)"
            report.add(Finding("warning", "", "numTraining", message, str(json_path)))
        label_folder = folder / settings.labels_dir
        if not label_folder.is_dir():
            raise DataError(f"{label_folder}: label folder not found")
        # without a file_ending, 3D labels match by case id whatever their volume ending
        by_id = labels_index(label_folder) if file_ending is None and dims == 3 else {}
        records: list[Record] = []
        for case in complete:
            label = by_id.get(case, label_folder / f"{case}{endings[case]}")
            if not label.is_file():
                message = f"{label}: label file not found for case {case!r}"
                report.add(Finding("error", case, "missing label", message, str(label)))
                continue
            records.append(make_record(settings, case, [cases[case][c] for c in range(n_channels)], label))
        kinds = channel_kinds(description.get("channel_names"), dims)
        if kinds:
            resolved["preprocessing.intensity.channels"] = kinds
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
            match = CHANNEL_FILE.match(path.name[: len(path.name) - len(ending)])
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
