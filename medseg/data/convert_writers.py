"""The target layouts of ``medseg convert`` (:mod:`medseg.data.convert`), one writer each: a read :class:`Source`
written into an empty folder as nnU-Net v2 raw data, an MSD dataset or medseg's folders."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medseg.data import convert_files as files
from medseg.data.layouts.base import is_nnunet_description
from medseg.data.records import Record

SIDECAR = "medseg_convert.json"
MAPPING = "medseg_label_mapping.json"
CARRIED = ("name", "description", "reference", "licence", "release")


@dataclass
class Source:
    """The dataset to convert, as read: its records, dimensions, description, sidecar and names."""

    folder: Path
    records: list[Record]
    dims: int
    description: dict[str, Any]
    sidecar: dict[str, Any]
    label_names: dict[int, str]
    values: list[int]
    channel_names: list[str]
    case_ids: dict[str, str]


@dataclass
class Converted:
    """What a conversion wrote: the target, its layout, the case count, the label mapping (source value -> value
    written), the renamed case ids, and how many files were copied unchanged / rewritten."""

    target: Path
    layout: str
    cases: int
    mapping: dict[int, int]
    names: dict[int, str]
    renamed: dict[str, str] = field(default_factory=dict)
    copied: int = 0
    rewritten: int = 0


def plain_name(name: str, taken: set[str], fallback: str) -> str:
    """``name`` as a plain file name (letters, digits, ``_``, ``-``), made unique among ``taken`` (and added to it)."""
    plain = re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_") or fallback
    unique, n = plain, 1
    while unique in taken:
        n += 1
        unique = f"{plain}_{n}"
    taken.add(unique)
    return unique


def label_mapping(values: list[int], names: dict[int, str]) -> dict[int, int]:
    """source value -> nnU-Net value: 0 stays background, the others consecutive in order, ``ignore`` the highest."""
    ignore = next((v for v, name in names.items() if name == "ignore"), None)
    ordered = sorted({0, *values, *names} - {ignore})
    mapping = {old: new for new, old in enumerate(ordered)}
    if ignore is not None:
        mapping[ignore] = len(ordered)
    return mapping


def write_json(path: Path, content: dict[str, Any]) -> None:
    """``content`` as indented JSON (into the staging folder, which is renamed into place as a whole)."""
    path.write_text(json.dumps(content, indent=4) + "\n", encoding="utf-8")


def _cases(source: Source, layout: str) -> Iterator[tuple[str, Record]]:
    """(new case id, record) for each case, with a progress bar."""
    from medseg.core.progress import progress_bar

    with progress_bar() as bar:
        for record in bar.track(source.records, description=f"Writing {layout}"):
            yield source.case_ids[record["id"]], record


def _channels(record: Record) -> list[tuple[Path, int | None]]:
    """(file, channel in it or None) for each channel of a 3D case: a 4D NIfTI gives one entry per channel."""
    images = [Path(p) for p in record["image"]]
    if len(images) == 1 and files.channel_count(images[0]) > 1:
        return [(images[0], c) for c in range(files.channel_count(images[0]))]
    return [(path, None) for path in images]


def _names(source: Source, values: list[int] | dict[int, int]) -> dict[int, str]:
    """source value -> label name (``background`` for 0, ``label_<value>`` where the source names none)."""
    return {v: source.label_names.get(v, "background" if v == 0 else f"label_{v}") for v in values}


def _nnunet_description(source: Source) -> dict[str, Any]:
    """What an nnU-Net dataset.json starts from: the nnU-Net description the source had (or carried in its
    sidecar), else the source description's name, description, reference, licence and release."""
    if source.sidecar.get("nnunet"):
        return dict(source.sidecar["nnunet"])
    if is_nnunet_description(source.description):
        return dict(source.description)
    return {key: source.description[key] for key in CARRIED if key in source.description}


def _sidecar(source: Source, **folders: Any) -> dict[str, Any]:
    """What an msd or folder target cannot say: dims, channel names, the nnU-Net description, the folder names."""
    nnunet = (
        _nnunet_description(source)
        if source.sidecar.get("nnunet") or is_nnunet_description(source.description)
        else None
    )
    return {
        "dims": source.dims,
        "channel_names": source.channel_names,
        **({"nnunet": nnunet} if nnunet else {}),
        **folders,
    }


class Counter:
    """How many files were copied unchanged and how many rewritten."""

    def __init__(self) -> None:
        self.copied = self.rewritten = 0

    def __call__(self, copied: bool) -> None:
        if copied:
            self.copied += 1
        else:
            self.rewritten += 1


def write_nnunet(source: Source, folder: Path) -> Converted:
    """nnU-Net v2 raw data: ``imagesTr/<case>_<channel><ending>``, ``labelsTr/<case><ending>``, ``dataset.json``."""
    mapping = label_mapping(source.values, source.label_names)
    relabel = None if all(old == new for old, new in mapping.items()) else mapping
    names = _names(source, mapping)
    images, labels = folder / "imagesTr", folder / "labelsTr"
    images.mkdir()
    labels.mkdir()
    count = Counter()
    if source.dims == 2:
        ending = ".png"
    else:
        used = {files.volume_ending(Path(p)) for r in source.records for p in [*r["image"], r["label"]]}
        ending = used.pop() if len(used) == 1 else files.NIFTI
    for case, record in _cases(source, "nnunet"):
        if source.dims == 2:
            count(files.write_image_2d(Path(record["image"]), images / f"{case}_0000.png"))
            count(files.write_label_2d(Path(record["label"]), labels / f"{case}.png", relabel))
            continue
        for c, (path, channel) in enumerate(_channels(record)):
            count(files.write_volume(path, images / f"{case}_{c:04d}{ending}", None, channel))
        count(files.write_volume(Path(record["label"]), labels / f"{case}{ending}", relabel))
    description = {
        **_nnunet_description(source),
        "channel_names": {str(c): name for c, name in enumerate(source.channel_names)},
        "labels": {names[old]: new for old, new in sorted(mapping.items(), key=lambda item: item[1])},
        "numTraining": len(source.records),
        "file_ending": ending,
    }
    write_json(folder / "dataset.json", description)
    renamed = {old: new for old, new in source.case_ids.items() if old != new}
    saved = {"labels": {str(old): new for old, new in mapping.items()}, "names": description["labels"]}
    write_json(folder / MAPPING, {**saved, "case_ids": renamed})
    return Converted(folder, "nnunet", len(source.records), mapping, names, renamed, count.copied, count.rewritten)


def write_msd(source: Source, folder: Path) -> Converted:
    """An MSD dataset: ``dataset.json`` listing ``training`` entries; 3D images one file per channel."""
    values = sorted({0, *source.values, *source.label_names})
    (folder / "imagesTr").mkdir()
    (folder / "labelsTr").mkdir()
    count = Counter()
    training: list[dict[str, Any]] = []
    for case, record in _cases(source, "msd"):
        image, label = Path(record["image"] if source.dims == 2 else record["image"][0]), Path(record["label"])
        if source.dims == 2:
            entry = {"image": f"imagesTr/{case}{image.suffix.lower()}", "label": f"labelsTr/{case}.png"}
            count(files.write_image_2d(image, folder / entry["image"]))
            count(files.write_label_2d(label, folder / entry["label"], None))
        else:
            paths = []
            for c, (path, channel) in enumerate(_channels(record)):
                paths.append(f"imagesTr/{case}_{c:04d}{files.volume_ending(path)}")
                count(files.write_volume(path, folder / paths[-1], None, channel))
            entry = {"id": case, "image": paths, "label": f"labelsTr/{case}{files.volume_ending(label)}"}
            count(files.write_volume(label, folder / entry["label"]))
        training.append(entry)
    channels = len(source.channel_names)
    description = {
        "name": source.description.get("name") or source.folder.name,
        **{key: source.description[key] for key in CARRIED[1:] if key in source.description},
        "tensorImageSize": "2D" if source.dims == 2 else ("4D" if channels > 1 else "3D"),
        "modality": {str(c): name for c, name in enumerate(source.channel_names)},
        "labels": {str(value): name for value, name in _names(source, values).items()},
        "numTraining": len(training),
        "numTest": 0,
        "training": training,
        "test": [],
    }
    write_json(folder / "dataset.json", description)
    write_json(folder / SIDECAR, _sidecar(source))
    return _identity(source, folder, "msd", values, count)


def write_folder(source: Source, folder: Path) -> Converted:
    """medseg's folders: 2D ``images/`` + ``masks/``; 3D one folder per channel (``images/`` for one) + ``labels/``."""
    count = Counter()
    if source.dims == 2:
        (folder / "images").mkdir()
        (folder / "masks").mkdir()
        for case, record in _cases(source, "folder"):
            image = Path(record["image"])
            count(files.write_image_2d(image, folder / "images" / f"{case}{image.suffix.lower()}"))
            count(files.write_label_2d(Path(record["label"]), folder / "masks" / f"{case}.png", None))
        write_json(folder / SIDECAR, _sidecar(source, layout="folder"))
        return _identity(source, folder, "folder", sorted({0, *source.values}), count)
    taken = {"labels"}
    channels = ["images"] if len(source.channel_names) == 1 else source.channel_names
    folders = [plain_name(name, taken, f"channel_{c}") for c, name in enumerate(channels)]
    for name in (*folders, "labels"):
        (folder / name).mkdir()
    for case, record in _cases(source, "folder"):
        for name, (path, channel) in zip(folders, _channels(record), strict=True):
            count(files.write_volume(path, folder / name / f"{case}{files.volume_ending(path)}", None, channel))
        label = Path(record["label"])
        count(files.write_volume(label, folder / "labels" / f"{case}{files.volume_ending(label)}"))
    write_json(folder / SIDECAR, _sidecar(source, layout="folders", modalities=folders, labels_dir="labels"))
    return _identity(source, folder, "folder", sorted({0, *source.values}), count)


def _identity(source: Source, folder: Path, layout: str, values: list[int], count: Counter) -> Converted:
    renamed = {old: new for old, new in source.case_ids.items() if old != new}
    mapping = {v: v for v in values}
    names = _names(source, values)
    return Converted(folder, layout, len(source.records), mapping, names, renamed, count.copied, count.rewritten)


#: target layout -> its writer
WRITERS: dict[str, Callable[[Source, Path], Converted]] = {
    "nnunet": write_nnunet,
    "msd": write_msd,
    "folder": write_folder,
}
