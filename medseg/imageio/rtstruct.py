"""RT Structure Sets (RTSTRUCT), what radiotherapy planning systems read, written from a label map with pydicom.

highdicom has no RTSTRUCT writer, and rt-utils needs the full OpenCV and writes ContourData values longer than DICOM's
16-character DS limit, so the object is built here: one ROI per label (ROINumber = the label value, its name and
ROIDisplayColor), and for every source slice the label touches, the slice's closed planar contours (scikit-image's
``find_contours`` at level 0.5, collinear points dropped) in patient coordinates from the slice's own
ImagePositionPatient, ImageOrientationPatient and PixelSpacing, each contour referencing its slice's SOP instance.
Coordinates are written in mm with 3 decimals (at most 16 characters).

Holes: a hole (or an island inside a hole) is its own closed contour on the same slice, and a point is inside the ROI
where it lies inside an odd number of the slice's contours (the even-odd rule: what Eclipse, RayStation, 3D Slicer's
SlicerRT and plastimatch read; no "keyhole" cuts).
"""

from __future__ import annotations

import datetime
from pathlib import Path

import numpy as np

from medseg.core.atomic import atomic_path
from medseg.imageio.dicom_seg import RTSTRUCT, output_uids, series_description, series_sources
from medseg.imageio.headers import ScanHeader
from medseg.labels import Label
from medseg.version import __version__

RT_STRUCTURE_SET_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
STUDY_COMPONENT_SOP_CLASS = "1.2.840.10008.3.1.2.3.1"  # what RTReferencedStudySequence conventionally names
COPIED = (  # patient and study attributes of the source, copied so the structure set files under the same study
    "SpecificCharacterSet",
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)
SIMPLIFY_PIXELS = 0.05  # collinear points within this distance (pixels) of the contour are dropped
DECIMALS = 3


def slice_contours(mask: np.ndarray) -> list[np.ndarray]:
    """The closed contours of a binary slice ((x, y) = (column, row)), outer boundaries and holes alike, each (N, 2)
    in (column, row) pixel coordinates without the repeated last point."""
    from skimage.measure import approximate_polygon, find_contours

    padded = np.pad(np.asarray(mask, dtype=np.uint8), 1)  # contours at the image edge close too
    contours = []
    for contour in find_contours(padded, 0.5):
        simplified = approximate_polygon(contour, SIMPLIFY_PIXELS) - 1.0
        contours.append(simplified[:-1] if np.allclose(simplified[0], simplified[-1]) else simplified)
    return [c for c in contours if len(c) >= 3]


def patient_points(points: np.ndarray, source) -> np.ndarray:
    """(column, row) pixel coordinates of slice ``source`` -> (N, 3) patient coordinates (mm)."""
    position = np.asarray(source.ImagePositionPatient, dtype=float)
    orientation = np.asarray(source.ImageOrientationPatient, dtype=float)
    row_spacing, column_spacing = (float(v) for v in source.PixelSpacing)
    along_row, along_column = orientation[:3], orientation[3:]  # the directions of increasing column / row index
    return (
        position
        + np.outer(points[:, 0] * column_spacing, along_row)
        + np.outer(points[:, 1] * row_spacing, along_column)
    )


def _ds_values(points: np.ndarray) -> list[str]:
    """Coordinates as DS strings of at most 16 characters (mm, 3 decimals; ``-0.000`` written ``0.000``)."""
    return [f"{v:.{DECIMALS}f}".replace("-0.000", "0.000") for v in np.round(points.ravel(), DECIMALS)]


def _image_reference(source):
    from pydicom.dataset import Dataset

    item = Dataset()
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    return item


def _referenced_frame(sources: list):
    """ReferencedFrameOfReferenceSequence -> RTReferencedStudySequence -> RTReferencedSeriesSequence -> every slice."""
    from pydicom.dataset import Dataset

    first = sources[0]
    series = Dataset()
    series.SeriesInstanceUID = first.SeriesInstanceUID
    series.ContourImageSequence = [_image_reference(s) for s in sources]
    study = Dataset()
    study.ReferencedSOPClassUID = STUDY_COMPONENT_SOP_CLASS
    study.ReferencedSOPInstanceUID = first.StudyInstanceUID
    study.RTReferencedSeriesSequence = [series]
    frame = Dataset()
    frame.FrameOfReferenceUID = first.FrameOfReferenceUID
    frame.RTReferencedStudySequence = [study]
    return frame


def _roi(label: Label, labels_map: np.ndarray, sources: list, frame_uid: str, description: str):
    """The three items of one label: StructureSetROI, ROIContour (its contours, slice by slice), RTROIObservations."""
    from pydicom.dataset import Dataset

    roi = Dataset()
    roi.ROINumber = label.value
    roi.ReferencedFrameOfReferenceUID = frame_uid
    roi.ROIName = label.name[:64]  # LO: at most 64 characters
    roi.ROIGenerationAlgorithm = "AUTOMATIC"
    roi.ROIGenerationDescription = description
    contours = []
    for k in np.flatnonzero((labels_map == label.value).any(axis=(0, 1))):
        for points in slice_contours(labels_map[:, :, k] == label.value):
            contour = Dataset()
            contour.ContourImageSequence = [_image_reference(sources[k])]
            contour.ContourGeometricType = "CLOSED_PLANAR"
            contour.NumberOfContourPoints = len(points)
            contour.ContourNumber = len(contours) + 1
            contour.ContourData = _ds_values(patient_points(points, sources[k]))
            contours.append(contour)
    roi_contour = Dataset()
    roi_contour.ROIDisplayColor = [int(c) for c in label.color]
    roi_contour.ReferencedROINumber = label.value
    if contours:
        roi_contour.ContourSequence = contours
    observation = Dataset()
    observation.ObservationNumber = label.value
    observation.ReferencedROINumber = label.value
    observation.ROIObservationLabel = label.name[:64]
    observation.RTROIInterpretedType = ""
    observation.ROIInterpreter = ""
    return roi, roi_contour, observation


def write_rtstruct(
    labels_map: np.ndarray, header: ScanHeader, labels: list[Label], output: Path, model_digest: str = ""
) -> Path:
    """Write ``labels_map`` ((x, y, z) on the series' grid) as an RT Structure Set referencing the source series,
    its UIDs from the source series and ``model_digest`` (:func:`medseg.imageio.dicom_seg.output_uids`).

    Raises:
        DataError: the scan is not a DICOM series, the map does not fit it, or the series lacks a UID.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    sources = series_sources(header, labels_map.shape, output, RTSTRUCT)
    first = sources[0]
    series_uid, sop_uid = output_uids(str(first.SeriesInstanceUID), model_digest, RTSTRUCT)
    now = datetime.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds = Dataset()
    for name in COPIED:
        if name in first:
            ds[name] = first[name]
        elif name != "SpecificCharacterSet":
            setattr(ds, name, "")  # type 2: present, empty
    ds.FrameOfReferenceUID = first.FrameOfReferenceUID  # the Frame of Reference module: the source's
    ds.PositionReferenceIndicator = first.get("PositionReferenceIndicator", "")
    ds.SOPClassUID, ds.SOPInstanceUID = RT_STRUCTURE_SET_STORAGE, sop_uid
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
    ds.Modality, ds.SeriesInstanceUID = "RTSTRUCT", series_uid
    ds.SeriesNumber = int(first.get("SeriesNumber", 0) or 0) + 101
    ds.SeriesDescription = series_description(model_digest)
    ds.OperatorsName = ""
    ds.Manufacturer, ds.ManufacturerModelName, ds.SoftwareVersions = "medseg", "medseg", __version__
    ds.InstanceNumber = 1
    ds.StructureSetLabel = "medseg"
    ds.StructureSetName = ds.SeriesDescription[:64]
    ds.StructureSetDate, ds.StructureSetTime = date, time
    ds.ReferencedFrameOfReferenceSequence = [_referenced_frame(sources)]
    items = [_roi(label, labels_map, sources, first.FrameOfReferenceUID, ds.SeriesDescription) for label in labels]
    ds.StructureSetROISequence = [roi for roi, _, _ in items]
    ds.ROIContourSequence = [contour for _, contour, _ in items]
    ds.RTROIObservationsSequence = [observation for _, _, observation in items]
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = RT_STRUCTURE_SET_STORAGE
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    with atomic_path(output) as tmp:
        ds.save_as(str(tmp), enforce_file_format=True)
    return output


# --------------------------------------------------------------------------------------------------
# Reading back
# --------------------------------------------------------------------------------------------------


def read_rtstruct(path: Path, header: ScanHeader) -> tuple[dict[int, str], np.ndarray]:
    """An RT Structure Set rasterised onto its source series' grid (``header``, a DICOM series): each contour filled
    on the slice it references (pixel centres inside), contours of one slice combined by the even-odd rule.

    Returns:
        ROI number -> ROI name, and the ROI numbers ((x, y, z) uint16; where ROIs overlap the later one wins).

    Raises:
        DataError: not an RTSTRUCT, or a contour references a slice that is not in the series.
    """
    import pydicom
    from skimage.draw import polygon

    from medseg.core.errors import DataError
    from medseg.imageio.headers import dicom_series_files

    dataset = pydicom.dcmread(str(path))
    if dataset.get("Modality") != "RTSTRUCT":
        raise DataError(f"{path}: not an RTSTRUCT (Modality is {dataset.get('Modality', 'missing')})")
    files = dicom_series_files(header.path)
    sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    slice_of = {
        str(s.get("SOPInstanceUID") or s.file_meta.MediaStorageSOPInstanceUID): k for k, s in enumerate(sources)
    }
    names = {int(roi.ROINumber): str(roi.ROIName) for roi in dataset.get("StructureSetROISequence", [])}
    shape = (*header.spatial_shape[:2], len(files))
    stacked = np.zeros(shape, dtype=np.uint16)
    for roi in dataset.get("ROIContourSequence", []):
        inside = np.zeros(shape, dtype=bool)
        for contour in roi.get("ContourSequence", []):
            uid = str(contour.ContourImageSequence[0].ReferencedSOPInstanceUID)
            if uid not in slice_of:
                raise DataError(
                    f"{path}: a contour of ROI {roi.ReferencedROINumber} references {uid}, not in {header.path}"
                )
            k = slice_of[uid]
            source = sources[k]
            points = np.asarray(contour.ContourData, dtype=float).reshape(-1, 3) - np.asarray(
                source.ImagePositionPatient, dtype=float
            )
            orientation = np.asarray(source.ImageOrientationPatient, dtype=float)
            row_spacing, column_spacing = (float(v) for v in source.PixelSpacing)
            columns, rows = points @ orientation[:3] / column_spacing, points @ orientation[3:] / row_spacing
            xs, ys = polygon(columns, rows, shape=shape[:2])
            inside[xs, ys, k] ^= True  # even-odd: a contour inside another is a hole
        stacked[inside] = int(roi.ReferencedROINumber)
    return names, stacked
