"""``medseg convert``: a dataset medseg reads, in any layout, written in another tool's layout: nnU-Net v2 raw
(``nnunet``), the Medical Segmentation Decathlon's (``msd``) or medseg's own folders (``folder``).

The source is read as every dataset is (:func:`~medseg.data.layouts.registry.find_in_layout`); case ids, label names,
channel names and the description's name, description, reference, licence and release are kept. Files are copied
byte-for-byte where the format stays and no value changes; otherwise rewritten with their dtype and geometry
(:mod:`medseg.data.convert_files`).

- ``nnunet``: labels renumbered consecutively (0 background, then the source's values in order, ``ignore`` the
  highest; the mapping in ``medseg_label_mapping.json``); 2D images and labels as PNG (RGB: one ``_0000.png``, channel
  names R, G, B); 3D volumes keep their common ending, else ``.nii.gz``; a 4D NIfTI is split into one file per
  channel.
- ``msd``: ``dataset.json`` with ``training`` entries; 3D images one file per channel (``<case>_0000<ending>``...).
- ``folder``: 2D ``images/`` + ``masks/``; 3D one folder per channel (``images/`` for one channel) + ``labels/``.

Channel names come from the source's description (``channel_names`` / ``modality``), else ``data.modalities``, else
R, G, B for colour images and ``image`` (``image_0``, ``image_1``... for several channels). Case ids that are not
plain names (letters, digits, ``_``, ``-``) are renamed and the renaming saved with the mapping. ``msd`` and
``folder`` targets carry what their format cannot say in ``medseg_convert.json`` (the nnU-Net description, the folder
names), so nnU-Net -> msd/folder -> nnU-Net gives the same ``dataset.json`` and the same files. The target is written
into a temporary sibling folder and renamed into place at the end.
"""

from __future__ import annotations

import os
import secrets
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

from medseg.core.errors import DataError
from medseg.data import convert_files as files
from medseg.data.convert_writers import MAPPING, SIDECAR, WRITERS, Converted, Source, plain_name
from medseg.data.layouts.base import LayoutSettings, is_nnunet_description, read_json
from medseg.data.records import Record
from medseg.imageio.formats import is_volume_file


def spatial_dims_of(folder: Path) -> int:
    """3 when the dataset folder (or a folder below it) holds volume files, else 2."""
    children = [p for p in folder.iterdir() if not p.name.startswith(".")] if folder.is_dir() else []
    grandchildren = [q for p in children if p.is_dir() for q in p.iterdir()]
    return 3 if any(is_volume_file(p) for p in (*children, *grandchildren)) else 2


def _label_names(description: dict[str, Any], settings: LayoutSettings, where: Path) -> dict[int, str]:
    """value -> name from the description (nnU-Net: name -> value; MSD: value -> name) and ``data.labels``."""
    labels = description.get("labels")
    names: dict[int, str] = {}
    if isinstance(labels, dict):
        for key, value in labels.items():
            if is_nnunet_description(description):
                if not isinstance(value, int):
                    raise DataError(f"{where}: labels.{key} is a region; convert writes plain label values only")
                names[value] = str(key)
            elif str(key).lstrip("-").isdigit():
                names[int(key)] = str(value)
    names.update({value: name for name, value in (settings.labels or {}).items()})
    return names


def _channel_names(described: Any, settings: LayoutSettings, records: list[Record], dims: int) -> list[str]:
    """The source's channel names (a description's index -> name map or a list), else ``data.modalities`` where they
    fit, else neutral names (R, G, B for colour images)."""
    if isinstance(described, dict) and described:
        return [str(described[key]) for key in sorted(described, key=lambda k: int(k) if str(k).isdigit() else 0)]
    if isinstance(described, list) and described:
        return [str(name) for name in described]
    if dims == 2:
        from medseg.imageio.images import open_image

        colour = open_image(Path(records[0]["image"])).mode not in ("L", "I;16", "I")
        return ["R", "G", "B"] if colour else list(settings.modalities[:1]) or ["image"]
    image = records[0]["image"]
    count = len(image) if len(image) > 1 else files.channel_count(Path(image[0]))
    if len(settings.modalities) == count:
        return list(settings.modalities)
    return ["image"] if count == 1 else [f"image_{c}" for c in range(count)]


def read_source(folder: Path, settings: LayoutSettings, dims: int | None = None) -> Source:
    """The dataset under ``folder`` read in its layout, with its label values (every label file read once)."""
    from medseg.data.layouts.registry import find_in_layout

    sidecar = read_json(folder / SIDECAR) if (folder / SIDECAR).is_file() else {}
    dims = dims or int(sidecar.get("dims", 0)) or spatial_dims_of(folder)
    if settings.layout == "auto" and sidecar.get("layout"):
        modalities = tuple(sidecar.get("modalities", settings.modalities))
        labels_dir = sidecar.get("labels_dir", settings.labels_dir)
        settings = replace(settings, layout=sidecar["layout"], labels_dir=labels_dir, modalities=modalities)
    settings = replace(settings, spatial_dims=dims)
    cases = find_in_layout(folder, settings)
    if not cases.records:
        raise DataError(f"{folder}: no cases found ({cases.layout} layout)")
    unlabelled = next((r for r in cases.records if not r.get("label")), None)
    if unlabelled is not None:
        raise DataError(f"{folder}: case {unlabelled['id']!r} has no label; convert writes labelled cases only")
    json_path = cases.source if cases.source.is_file() else folder / settings.dataset_json
    description = read_json(json_path) if json_path.is_file() and json_path.suffix == ".json" else {}
    named = cases.resolved.get("data.labels") or {}  # value -> name, where the layout names its labels
    ignore = cases.resolved.get("data.ignore_label")
    names = {**named, **({ignore: "ignore"} if ignore is not None else {})}
    names.update(_label_names(sidecar.get("nnunet") or description, settings, json_path))
    values = _label_values(cases.records, dims)
    taken: set[str] = set()
    ids = {r["id"]: plain_name(r["id"], taken, "case") for r in cases.records}
    described = (
        sidecar.get("channel_names")
        or sidecar.get("nnunet", {}).get("channel_names")
        or description.get("channel_names", description.get("modality"))
    )
    channels = _channel_names(described, settings, cases.records, dims)
    return Source(folder, cases.records, dims, description, sidecar, names, values, channels, ids)


def _label_values(records: list[Record], dims: int) -> list[int]:
    """The label values the cases use, every label file read once."""
    from medseg.core.progress import progress_bar

    found: set[int] = set()
    with progress_bar() as bar:
        for record in bar.track(records, description="Reading labels"):
            path = Path(record["label"])
            values = files.integer_values(files.read_label(path, dims), path)
            if values and values[0] < 0:
                raise DataError(f"{path}: label values must not be negative (found {values[0]})")
            found.update(values)
    return sorted(found)


def convert_dataset(
    source: Path, target: Path, to: str, settings: LayoutSettings, dims: int | None = None
) -> Converted:
    """``source`` written in layout ``to`` at ``target`` (new or empty; never inside ``source``).

    Raises:
        DataError: one line: an unknown target layout, a target that is not empty or lies inside the source, or
            what reading the source found.
    """
    if to not in WRITERS:
        raise DataError(f"--to {to}: expected one of {', '.join(WRITERS)}")
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise DataError(f"{target}: already exists and is not empty; convert writes into a new or empty folder")
    if target.resolve().is_relative_to(source.resolve()):
        raise DataError(f"{target}: inside the source dataset {source}; convert never writes into its source")
    read = read_source(source, settings, dims)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.converting-{secrets.token_hex(4)}"
    staging.mkdir()
    try:
        converted = WRITERS[to](read, staging)
        if target.exists():
            target.rmdir()
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    converted.target = target
    return converted


def describe(converted: Converted) -> list[str]:
    """What a conversion did, for the command line: the target, the label mapping, the renamed cases."""
    lines = [
        f"{converted.target}: {converted.cases} case(s) as {converted.layout} "
        f"({converted.copied} file(s) copied unchanged, {converted.rewritten} rewritten)"
    ]
    changed = converted.layout == "nnunet"
    where = f" (saved in {converted.target / MAPPING})" if changed else ""
    pairs = ", ".join(f"{old} -> {new} {converted.names[old]}" for old, new in converted.mapping.items())
    lines.append(f"labels{where}: {pairs}")
    if converted.renamed:
        lines.append("renamed cases: " + ", ".join(f"{old!r} -> {new}" for old, new in converted.renamed.items()))
    return lines
