"""What ``medseg predict`` reads: the cases of an input file or folder, without labels.

nnU-Net's ``imagesTs`` names its files ``<case>_0000``: where every input follows ``<case>_<4 digits>``, the case is
``<case>`` (so the masks are ``<case><file_ending>``, as nnU-Net's predictor writes them). A dataset folder or its
``dataset.json`` means the json's ``test`` list (MSD), else the folder's ``imagesTs`` (nnU-Net).
"""

from __future__ import annotations

from pathlib import Path

from medseg.core.errors import DataError
from medseg.data.layouts.base import read_json
from medseg.data.layouts.msd import listed_test_cases
from medseg.data.layouts.nnunet import CHANNEL_FILE
from medseg.data.records import Record
from medseg.imageio.dicom_series import DICOMDIR
from medseg.imageio.formats import IMAGE_2D_SUFFIXES, VOLUME_SUFFIXES, is_image_2d, is_volume_file, volume_id


def image_inputs(source: Path) -> list[Record]:
    """Records for one image file or every image in a folder (no masks)."""
    if not source.exists():
        raise DataError(f"{source}: prediction input not found")
    paths = (
        [source]
        if source.is_file()
        # not p.is_dir(): a broken or looping symlink with an image name is reported as a failed case, not skipped
        else sorted(p for p in source.iterdir() if not p.is_dir() and is_image_2d(p))
    )
    if not paths:
        raise DataError(f"{source}: no images found (looked for {', '.join(IMAGE_2D_SUFFIXES)})")
    return [{"id": case, "image": str(p)} for case, p in zip(case_ids([p.stem for p in paths]), paths, strict=True)]


def case_ids(names: list[str]) -> list[str]:
    """The case ids of input files named ``names`` (without their ending): ``<case>`` for nnU-Net's
    ``<case>_<4 digits>`` where every name follows it (and the cases stay distinct), else the names."""
    matches = [CHANNEL_FILE.match(name) for name in names]
    if not names or not all(matches):
        return names
    cases = [match["case"] for match in matches if match]
    return cases if len(set(cases)) == len(cases) else names


def volume_inputs(source: Path, channels: int = 1, skipped: bool = False) -> list[Record]:
    """Cases from one scan (file or DICOM folder) or a folder of scans.

    With several channels, files follow nnU-Net naming: ``<case>_0000.nii.gz``, ``<case>_0001.nii.gz``...
    A sub-folder is taken as one DICOM series. One channel: DICOM is found by reading the headers of the whole
    tree (:func:`dicom_inputs`); with ``skipped``, the series that are not read come too, each record with its
    reason under ``"skipped"``.
    """
    if not source.exists():
        raise DataError(f"{source}: prediction input not found")
    if channels == 1 and (source.is_dir() or source.name.upper() == DICOMDIR):
        return dicom_inputs(source, skipped)
    is_scan = source.is_file() or (
        source.is_dir()
        and not any(p.is_dir() for p in source.iterdir())
        and not any(is_volume_file(p) for p in source.iterdir())
    )
    entries = [source] if is_scan else sorted(p for p in source.iterdir() if p.is_dir() or is_volume_file(p))
    if not entries:
        raise DataError(f"{source}: no scans found (looked for {', '.join(VOLUME_SUFFIXES)} files and DICOM folders)")
    if channels == 1:
        ids = case_ids([volume_id(p) for p in entries])
        return [{"id": case, "image": [str(p)]} for case, p in zip(ids, entries, strict=True)]
    cases: dict[str, dict[int, Path]] = {}
    for path in entries:
        case, _, index = volume_id(path).rpartition("_")
        if not case or not (index.isdigit() and len(index) == 4):
            raise DataError(
                f"{path}: a {channels}-channel model needs files named <case>_0000 ... <case>_{channels - 1:04d}"
            )
        cases.setdefault(case, {})[int(index)] = path
    records = []
    for case, files in sorted(cases.items()):
        if sorted(files) != list(range(channels)):
            raise DataError(f"{source}: case {case!r} has channels {sorted(files)}, expected 0..{channels - 1}")
        records.append({"id": case, "image": [str(files[i]) for i in range(channels)]})
    return records


def dicom_inputs(source: Path, skipped: bool = False) -> list[Record]:
    """The volume files directly in ``source`` and the DICOM series of its tree (patient / study / series folders,
    a DICOMDIR, series mixed in a folder), one case per series (:mod:`medseg.imageio.dicom_series`); with
    ``skipped``, also the series that are not read, their reason under ``"skipped"``."""
    from medseg.imageio.dicom_series import find_series, series_names

    folder = source if source.is_dir() else source.parent
    files = sorted(p for p in folder.iterdir() if is_volume_file(p)) if source.is_dir() else []
    ids = case_ids([volume_id(p) for p in files])
    records: list[Record] = [{"id": case, "image": [str(p)]} for case, p in zip(ids, files, strict=True)]
    series = find_series(source)
    not_read: list[Record] = []
    for item, case in zip(series, series_names(series, folder, set(ids)), strict=True):
        if item.skipped:
            not_read.append({"id": case, "image": [str(item.reference)], "skipped": item.skipped})
        else:
            records.append({"id": case, "image": [str(item.reference)]})
    if not records:
        listed = "; ".join(f"{r['id']}: {r['skipped']}" for r in not_read[:3])
        raise DataError(
            f"{source}: no scans found (looked for {', '.join(VOLUME_SUFFIXES)} files and DICOM series)"
            + (f"; not read: {listed}" if listed else "")
        )
    return sorted(records + (not_read if skipped else []), key=lambda r: r["id"])


def _dataset_inputs(source: Path) -> Path | None:
    """A dataset's own prediction inputs: its dataset.json when it lists ``test`` cases, else its imagesTs folder;
    None for anything else."""
    description = source if source.is_file() and source.suffix.lower() == ".json" else source / "dataset.json"
    if not description.is_file():
        return None
    if "test" in read_json(description):
        return description
    images = description.parent / "imagesTs"
    return images if images.is_dir() else None


def predict_inputs(source: Path, spatial_dims: int, channels: int, skipped: bool = False) -> list[Record]:
    """The cases of ``source`` for a 2D or 3D model (a dataset folder or dataset.json: its test cases); with
    ``skipped``, also the DICOM series that are not read (:func:`volume_inputs`)."""
    listed = _dataset_inputs(source) if source.exists() else None
    if listed is not None and listed.is_file():
        return listed_test_cases(listed, spatial_dims)
    source = listed or source
    return volume_inputs(source, channels, skipped) if spatial_dims == 3 else image_inputs(source)
