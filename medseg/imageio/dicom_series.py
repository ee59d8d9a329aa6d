"""DICOM as it leaves a PACS or a CD: the series of a folder tree, found by reading the file headers (no pixels).

A tree may hold patient / study / series folders, a DICOMDIR (its listed files are read), or several series mixed
in one folder. Files are told apart by their content (the ``DICM`` prefix), not their names, and grouped by
SeriesInstanceUID. A series alone in its folder is read as that folder (as a hand-made series folder always was);
a series that shares its folder with other DICOM files is named by its first file, and read as the files of that
file's series (:func:`medseg.imageio.headers.dicom_series_files`), so no other file is read with it.

Series medseg cannot segment are listed with the reason instead of failing: objects without pixels (SR, SEG,
RTSTRUCT, presentation states...), localizers, multi-frame files and series of fewer than :data:`MIN_SLICES` slices.
"""

from __future__ import annotations

import logging
import os
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from medseg.imageio.formats import DICOM_SUFFIXES, IMAGE_2D_SUFFIXES, VOLUME_SUFFIXES, PathLike, has_suffix

log = logging.getLogger(__name__)

DICOMDIR = "DICOMDIR"
MEDIA_DIRECTORY_SOP_CLASS = "1.2.840.10008.1.3.10"  # the DICOMDIR itself
#: modalities of DICOM objects that hold no image medseg can segment
NOT_IMAGES = ("SR", "SEG", "RTSTRUCT", "RTPLAN", "RTRECORD", "PR", "KO", "DOC", "REG", "RWV", "FID", "PLAN")
MIN_SLICES = 3  # fewer slices: a scout or a single image, not a volume to segment
TAGS = [
    "SeriesInstanceUID",
    "PatientID",
    "StudyDate",
    "SeriesNumber",
    "Modality",
    "ImageType",
    "Rows",
    "NumberOfFrames",
]


def is_dicom_file(path: PathLike) -> bool:
    """A DICOM file: a ``.dcm`` / ``.dicom`` / ``.ima`` file, or a file without a known image ending whose content
    starts with the DICOM preamble and ``DICM`` (files from a PACS or a CD often have no ending)."""
    path = Path(path)
    if has_suffix(path, DICOM_SUFFIXES):
        return path.is_file()
    if has_suffix(path, VOLUME_SUFFIXES + IMAGE_2D_SUFFIXES) or not path.is_file():
        return False
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def is_dicom_series(path: PathLike) -> bool:
    """A DICOM series as medseg names one: a folder of slices, or one slice standing for its series."""
    return Path(path).is_dir() or is_dicom_file(path)


@dataclass(frozen=True)
class DicomSeries:
    """One series found in a tree: its files, the header values that name it, and why it is not read (or "")."""

    uid: str
    files: tuple[Path, ...]
    patient_id: str = ""
    study_date: str = ""
    series_number: str = ""
    modality: str = ""
    alone: bool = True  # the only DICOM files of their folder
    skipped: str = ""

    @property
    def folder(self) -> Path:
        return self.files[0].parent

    @property
    def reference(self) -> Path:
        """What a case's ``image`` holds: the folder where the series is alone in it, else its first file."""
        return self.folder if self.alone else self.files[0]

    @property
    def readable_name(self) -> str:
        """``PatientID_StudyDate_SeriesNumber``, in characters safe for a file name."""
        parts = (self.patient_id or "unknown", self.study_date or "nodate", self.series_number or "series")
        return "_".join(re.sub(r"[^A-Za-z0-9.-]+", "-", part.strip()).strip("-.") or "x" for part in parts)


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value).strip()


def _read(path: Path):
    """A file's header (selected tags), or None for a file that is not DICOM or is the DICOMDIR."""
    import pydicom

    try:  # a .dcm file without the preamble is still read (GDCM reads it too)
        dataset = pydicom.dcmread(
            str(path), stop_before_pixels=True, specific_tags=TAGS, force=has_suffix(path, DICOM_SUFFIXES)
        )
    except Exception as exc:  # pydicom raises many kinds of error on damaged files: the file is left out, and said
        log.warning("%s: skipped, not a readable DICOM file (%s)", path, exc)
        return None
    meta = getattr(dataset, "file_meta", None)
    if meta is not None and str(meta.get("MediaStorageSOPClassUID", "")) == MEDIA_DIRECTORY_SOP_CLASS:
        return None
    return dataset


def _dicomdir_files(dicomdir: Path) -> list[Path] | None:
    """The files a DICOMDIR lists (pydicom's FileSet); None (the tree is walked instead) when it cannot be read."""
    import pydicom
    from pydicom.fileset import FileSet

    try:
        return sorted(Path(instance.path) for instance in FileSet(pydicom.dcmread(str(dicomdir))))
    except Exception as exc:  # a damaged DICOMDIR: the files are still there to be found by walking
        log.warning("%s: unreadable DICOMDIR (%s); reading every file's header instead", dicomdir, exc)
        return None


def _tree_files(source: Path) -> list[Path]:
    """Every DICOM file under ``source`` (hidden names and volume files left out), in path order."""
    found = []
    for root, folders, names in os.walk(source):
        folders[:] = sorted(f for f in folders if not f.startswith("."))
        found += [Path(root) / n for n in sorted(names) if not n.startswith(".") and is_dicom_file(Path(root) / n)]
    return found


def _skip_reason(first, files: list[Path], uid: str, alone: bool) -> str:
    modality = _text(first.get("Modality"))
    if modality in NOT_IMAGES or "Rows" not in first:
        return f"not an image series (Modality {modality or 'missing'})"
    if "LOCALIZER" in _text(first.get("ImageType")).upper().split("\\"):
        return "a localizer (ImageType LOCALIZER)"
    if int(first.get("NumberOfFrames") or 1) > 1:
        return f"a multi-frame image ({first.NumberOfFrames} frames in one file); medseg reads one file per slice"
    if len({f.parent for f in files}) > 1:
        return f"its files lie in {len({f.parent for f in files})} folders; medseg reads a series from one folder"
    if not uid and not alone:
        return "no SeriesInstanceUID, and its folder holds other DICOM files: it cannot be told apart"
    if len(files) < MIN_SLICES:
        return f"too few slices ({len(files)}; a volume needs at least {MIN_SLICES})"
    return ""


def find_series(source: Path) -> list[DicomSeries]:
    """The DICOM series under ``source`` (a folder, or a DICOMDIR file), each with its files in path order; series
    medseg does not read carry the reason in ``skipped``."""
    source = Path(source)
    dicomdir = source if source.is_file() and source.name.upper() == DICOMDIR else source / DICOMDIR
    files = _dicomdir_files(dicomdir) if dicomdir.is_file() else None
    if files is None:
        files = _tree_files(source.parent if source.is_file() else source)
    groups: dict[tuple[str, Path | None], list[tuple[Path, object]]] = defaultdict(list)
    per_folder: dict[Path, int] = defaultdict(int)
    for path in files:
        dataset = _read(path)
        if dataset is None:
            continue
        uid = _text(dataset.get("SeriesInstanceUID"))
        groups[(uid, None if uid else path.parent)].append((path, dataset))  # no UID: one series per folder
        per_folder[path.parent] += 1
    found = []
    for (uid, _), members in sorted(groups.items(), key=lambda item: str(item[1][0][0])):
        paths = [path for path, _ in members]
        first = members[0][1]
        alone = len({p.parent for p in paths}) == 1 and per_folder[paths[0].parent] == len(paths)
        found.append(
            DicomSeries(
                uid=uid,
                files=tuple(paths),
                patient_id=_text(first.get("PatientID")),
                study_date=_text(first.get("StudyDate")),
                series_number=_text(first.get("SeriesNumber")),
                modality=_text(first.get("Modality")),
                alone=alone,
                skipped=_skip_reason(first, paths, uid, alone),
            )
        )
    return found


def series_names(series: list[DicomSeries], source: Path, taken: set[str] = frozenset()) -> list[str]:
    """The case id of each series, distinct from each other and from ``taken``: its folder's name where every
    series sits alone in ``source`` or in a folder directly inside it (a folder of series folders), else
    ``PatientID_StudyDate_SeriesNumber`` (``_2``, ``_3``... where two series would share one)."""
    source = Path(source)
    by_folder = source.is_dir() and all(s.alone and source in (s.folder, s.folder.parent) for s in series)
    names, used = [], set(taken)
    for item in series:
        base = item.folder.name if by_folder else item.readable_name
        name, count = base, 1
        while name in used:
            count += 1
            name = f"{base}_{count}"
        used.add(name)
        names.append(name)
    return names
