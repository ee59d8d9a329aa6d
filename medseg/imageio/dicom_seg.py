"""DICOM Segmentation (DICOM-SEG) objects for PACS, through highdicom: written from a label map, read as labels.

Writing: the label map is on the DICOM series' own grid ((x, y, z), z in the series' slice order as
:func:`medseg.imageio.headers.dicom_series_files` lists the files), so slice ``k`` is frame ``k`` of the
SEG and references source instance ``k``. One segment per label, with its name, code and colour. The UIDs of every
DICOM object medseg writes (SEG here, RTSTRUCT in :mod:`medseg.imageio.rtstruct`) come from :func:`output_uids`, and
the source slices they reference from :func:`series_sources`.

Reading: BINARY, FRACTIONAL (a voxel belongs to a segment from a fraction of 0.5) and LABELMAP segmentations, through
highdicom's volume API: the frames are placed by their ImagePositionPatient (a SEG often stores only the frames that
hold a segment), each segment named by its SegmentLabel; where segments overlap the later segment wins.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medseg.core.atomic import atomic_path
from medseg.core.errors import DataError, error_summary
from medseg.imageio.headers import ScanHeader, dicom_series_files
from medseg.labels import ANATOMICAL_STRUCTURE, KNOWN_CATEGORIES, Label
from medseg.version import __version__

SEG_SUFFIX = ".dcm"


def _concept(code: tuple[str, str] | None, meaning: str, default: tuple[str, str, str]):
    from highdicom.sr import CodedConcept

    if code is None:
        return CodedConcept(value=default[1], scheme_designator=default[0], meaning=default[2])
    return CodedConcept(value=code[1], scheme_designator=code[0], meaning=meaning)


def segment_descriptions(labels: list[Label]) -> list:
    """One highdicom ``SegmentDescription`` per label (segment numbers 1..n in the labels' order)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    algorithm = hd.AlgorithmIdentificationSequence(
        name="medseg", family=codes.cid7162.ArtificialIntelligence, version=__version__
    )
    descriptions = []
    for number, label in enumerate(labels, start=1):
        category = label.category
        category_meaning = KNOWN_CATEGORIES.get(category, label.name) if category else ANATOMICAL_STRUCTURE[2]
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=label.name,
                segmented_property_category=_concept(category, category_meaning, ANATOMICAL_STRUCTURE),
                # without a code: the generic "Tissue" type, the label named only by its segment label
                segmented_property_type=_concept(label.code, label.name, ("SCT", "85756007", "Tissue")),
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm,
                display_color=hd.color.CIELabColor.from_rgb(*label.color),
            )
        )
    return descriptions


REFERENCED = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "FrameOfReferenceUID")
#: the ``kind`` of each DICOM object medseg writes (its ``--format`` name), one of :func:`output_uids`' sources
DICOM_SEG, RTSTRUCT = "dicom-seg", "rtstruct"
OBJECT_NAMES = {DICOM_SEG: "DICOM-SEG", RTSTRUCT: "RTSTRUCT"}
DESCRIPTION_DIGITS = 12  # of the model digest, in SeriesDescription


def output_uids(source_series_uid: str, model_digest: str, kind: str) -> tuple[str, str]:
    """(SeriesInstanceUID, SOPInstanceUID) of the ``kind`` object (``dicom-seg``, ``rtstruct``) a model with
    ``model_digest`` writes for the source series: derived from the three, so a retry writes (and a PACS stores)
    the same instance. Without a digest (a caller that has none) the UIDs are new each time."""
    from pydicom.uid import generate_uid

    if not model_digest:
        return generate_uid(), generate_uid()
    sources = ["medseg", source_series_uid, model_digest, kind]
    return generate_uid(entropy_srcs=[*sources, "series"]), generate_uid(entropy_srcs=[*sources, "instance"])


def series_description(model_digest: str) -> str:
    """``medseg <first 12 hex of the model digest>``: which model made the object, readable in a PACS list."""
    return f"medseg {model_digest[:DESCRIPTION_DIGITS]}" if model_digest else "medseg segmentation"


def _source(dataset, path: str, series: Path, kind: str):
    """A source slice's header, its SOP identifiers completed from the file meta; DataError naming the series and
    the missing attributes when the series lacks the identifiers ``kind`` must reference (removed by
    anonymisation)."""
    meta = getattr(dataset, "file_meta", None)
    if meta is not None:
        dataset.SOPClassUID = dataset.get("SOPClassUID") or meta.get("MediaStorageSOPClassUID", "")
        dataset.SOPInstanceUID = dataset.get("SOPInstanceUID") or meta.get("MediaStorageSOPInstanceUID", "")
    missing = [name for name in REFERENCED if not str(dataset.get(name, "")).strip()]
    if missing:
        raise DataError(
            f"DICOM series {series}: no {', '.join(missing)} in {Path(path).name} (removed by anonymisation?); "
            f"a {OBJECT_NAMES.get(kind, kind)} must reference them: write nifti or seg.nrrd for this series"
        )
    return dataset


def series_sources(header: ScanHeader, shape: tuple[int, ...], output: Path, kind: str) -> list:
    """The headers (no pixels) of the source series' slices, in the label map's z order, each holding the UIDs a
    ``kind`` object references.

    Raises:
        DataError: the scan is not a DICOM series, the map (``shape``) does not fit it, or a UID is missing.
    """
    import pydicom

    if not header.is_series:
        raise DataError(
            f"{header.path}: {OBJECT_NAMES.get(kind, kind)} needs a DICOM series as input (there is no DICOM source "
            "to reference)"
        )
    files = dicom_series_files(header.path)
    if tuple(shape) != (*header.spatial_shape[:2], len(files)):
        raise DataError(f"label map for {output} does not fit the {len(files)} slices of {header.path}")
    return [_source(pydicom.dcmread(f, stop_before_pixels=True), f, header.path, kind) for f in files]


def write_dicom_seg(
    labels_map: np.ndarray, header: ScanHeader, labels: list[Label], output: Path, model_digest: str = ""
) -> Path:
    """Write ``labels_map`` ((x, y, z) on the series' grid) as a binary DICOM-SEG referencing the series; its
    UIDs from the source series and ``model_digest`` (:func:`output_uids`).

    Raises:
        DataError: the reference is not a DICOM series, the map does not fit it, or the series lacks a UID.
    """
    import highdicom as hd

    sources = series_sources(header, labels_map.shape, output, DICOM_SEG)
    series_uid, sop_uid = output_uids(str(sources[0].SeriesInstanceUID), model_digest, DICOM_SEG)
    segment_of = np.zeros(256, dtype=np.uint8)  # label value -> segment number (1..n)
    for number, label in enumerate(labels, start=1):
        segment_of[label.value] = number
    frames = segment_of[np.asarray(labels_map, dtype=np.uint8)].transpose(2, 1, 0)  # (x, y, z) -> (z, rows, cols)
    first = sources[0]
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=np.ascontiguousarray(frames),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segment_descriptions(labels),
        series_instance_uid=series_uid,
        series_number=int(getattr(first, "SeriesNumber", 0) or 0) + 100,
        sop_instance_uid=sop_uid,
        instance_number=1,
        manufacturer="medseg",
        manufacturer_model_name="medseg",
        software_versions=__version__,
        device_serial_number="0",
        series_description=series_description(model_digest),
        omit_empty_frames=False,
    )
    with atomic_path(output) as tmp:
        seg.save_as(str(tmp))
    return output


# --------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------

SEG_MODALITY = "SEG"
FRACTION_PRESENT = 0.5  # a FRACTIONAL segment holds the voxels with at least this fraction


def _header(path: Path):
    """The DICOM header of ``path`` without its pixels; DataError if it is not a DICOM file."""
    import pydicom

    try:
        return pydicom.dcmread(str(path), stop_before_pixels=True)
    except (OSError, pydicom.errors.InvalidDicomError) as exc:
        raise DataError(f"{path}: not a readable DICOM file ({exc})") from None


def find_dicom_seg(folder: Path) -> Path:
    """The one DICOM-SEG file in ``folder``; DataError when it holds none or several."""
    found = []
    for path in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
        try:
            if _header(path).get("Modality") == SEG_MODALITY:
                found.append(path)
        except DataError:
            continue  # not DICOM: a note, a thumbnail
    if len(found) != 1:
        listed = f": {', '.join(p.name for p in found)}" if found else ""
        raise DataError(f"{folder}: expected one DICOM-SEG file, found {len(found)}{listed}")
    return found[0]


def _segmentation(path: Path, lazy: bool):
    import highdicom as hd

    if _header(path).get("Modality") != SEG_MODALITY:
        raise DataError(f"{path}: not a DICOM-SEG (Modality is not SEG)")
    try:
        return hd.seg.segread(str(path), lazy_frame_retrieval=lazy)
    except (AttributeError, KeyError, ValueError, TypeError) as exc:
        raise DataError(f"{path}: cannot read the DICOM-SEG ({error_summary(exc)})") from None


def dicom_seg_names(path: Path) -> list[str]:
    """The SegmentLabel of each segment, in segment-number order (no pixels read)."""
    seg = _segmentation(path, lazy=True)
    return [seg.get_segment_description(n).segment_label for n in seg.segment_numbers]


def check_referenced_series(path: Path, scan: ScanHeader) -> None:
    """DataError when the SEG's ReferencedSeriesSequence does not name the series of ``scan`` (a DICOM series)."""
    referenced = [str(item.SeriesInstanceUID) for item in _header(path).get("ReferencedSeriesSequence", [])]
    if not referenced:
        return
    own = str(_header(Path(dicom_series_files(scan.path)[0])).get("SeriesInstanceUID", ""))
    if own and own not in referenced:  # (an anonymised series without its UID: only the geometry tells)
        raise DataError(f"{path}: references series {referenced[0]}, not the scan's series {own} ({scan.path})")


def read_dicom_seg(path: Path) -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
    """A DICOM-SEG file as segment numbers on the grid its frames span; where segments overlap the later one wins.

    Returns:
        The segment labels in segment-number order, the segment numbers ((x, y, z) uint16: 0 background, ``i + 1``
        for ``names[i]``) and their voxel-to-LPS affine.

    Raises:
        DataError: one line naming the file: not a SEG, or frames that do not form a regularly spaced volume.
    """
    import highdicom as hd

    seg = _segmentation(path, lazy=False)
    numbers = list(seg.segment_numbers)
    names = tuple(seg.get_segment_description(n).segment_label for n in numbers)
    labelmap = seg.segmentation_type == hd.seg.SegmentationTypeValues.LABELMAP
    try:
        volume = seg.get_volume(combine_segments=labelmap, relabel=labelmap)
    except (RuntimeError, ValueError) as exc:
        raise DataError(f"{path}: its frames do not form a volume ({error_summary(exc)})") from None
    array = np.asarray(volume.array)  # (slices, rows, columns[, segments])
    if labelmap:
        stacked = array.astype(np.uint16)
    else:
        stacked = np.zeros(array.shape[:3], dtype=np.uint16)
        fractional = seg.segmentation_type == hd.seg.SegmentationTypeValues.FRACTIONAL
        for index in range(len(numbers)):
            present = array[..., index] >= FRACTION_PRESENT if fractional else array[..., index] > 0
            stacked[present] = index + 1
    affine = np.array(volume.affine, dtype=float)  # (slice, row, column) -> LPS
    affine[:3, :3] = affine[:3, [2, 1, 0]]  # (column, row, slice) = (x, y, z)
    return names, stacked.transpose(2, 1, 0), affine
