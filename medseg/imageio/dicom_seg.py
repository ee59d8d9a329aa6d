"""DICOM Segmentation (DICOM-SEG) objects for PACS, through highdicom.

The label map is on the DICOM series' own grid ((x, y, z), z in the series' slice order as
:func:`medseg.imageio.headers.dicom_series_files` lists the files), so slice ``k`` is frame ``k`` of the
SEG and references source instance ``k``. One segment per label, with its name, code and colour.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medseg.core.atomic import atomic_path
from medseg.core.errors import DataError
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


def _source(dataset, path: str):
    """A source slice's header, its SOP identifiers completed from the file meta; DataError when the series lacks
    the identifiers a DICOM-SEG must reference (an anonymisation that removed them)."""
    meta = getattr(dataset, "file_meta", None)
    if meta is not None:
        dataset.SOPClassUID = dataset.get("SOPClassUID") or meta.get("MediaStorageSOPClassUID", "")
        dataset.SOPInstanceUID = dataset.get("SOPInstanceUID") or meta.get("MediaStorageSOPInstanceUID", "")
    missing = [name for name in REFERENCED if not dataset.get(name)]
    if missing:
        raise DataError(
            f"{path}: no {', '.join(missing)} (removed by anonymisation?); a DICOM-SEG must reference them: "
            "write nifti or seg.nrrd for this series"
        )
    return dataset


def write_dicom_seg(labels_map: np.ndarray, header: ScanHeader, labels: list[Label], output: Path) -> Path:
    """Write ``labels_map`` ((x, y, z) on the series' grid) as a binary DICOM-SEG referencing the series.

    Raises:
        DataError: the reference is not a DICOM series folder, or the map does not fit it.
    """
    import highdicom as hd
    import pydicom

    if not header.is_series:
        raise DataError(f"{header.path}: DICOM-SEG needs a DICOM series as input (there is no source series)")
    files = dicom_series_files(header.path)
    if labels_map.shape != (*header.spatial_shape[:2], len(files)):
        raise DataError(f"label map for {output} does not fit the {len(files)} slices of {header.path}")
    sources = [_source(pydicom.dcmread(f, stop_before_pixels=True), f) for f in files]
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
        series_instance_uid=hd.UID(),
        series_number=int(getattr(first, "SeriesNumber", 0) or 0) + 100,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="medseg",
        manufacturer_model_name="medseg",
        software_versions=__version__,
        device_serial_number="0",
        series_description="medseg segmentation",
        omit_empty_frames=False,
    )
    with atomic_path(output) as tmp:
        seg.save_as(str(tmp))
    return output
