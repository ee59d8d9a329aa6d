"""The picture in docs/pacs.md: the test phantom sent through a real Orthanc and back.

Starts Orthanc (Debian's ``orthanc`` + ``orthanc-dicomweb``) on free ports in a temporary folder, uploads the CT
phantom of ``tests/outputs/test_dicomweb.py``, segments it with ``medseg.predict_dicomweb`` (a threshold network,
exact on the phantom), stores the DICOM-SEG and the RTSTRUCT, reads both back from Orthanc and draws the middle
slice: the SEG's frame laid over its source slice, and the RTSTRUCT's contour on the same slice.

    .venv/bin/python scripts/pacs_picture.py [docs/pacs_round_trip.png]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.helpers.orthanc import STUDY_UID, phantom_volume, running_orthanc, write_ct_series  # noqa: E402
from tests.outputs.test_dicomweb import SERIES_A, read_back, threshold_predictor  # noqa: E402


def main(target: Path) -> None:
    import highdicom as hd
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from medseg.imageio.label_maps import SUFFIXES
    from medseg.outputs.dicomweb import DicomwebSource, predict_dicomweb
    from medseg.outputs.settings import Outputs

    formats = ("dicom-seg", "rtstruct") if "rtstruct" in SUFFIXES else ("dicom-seg",)
    volume, _ = phantom_volume()
    k = volume.shape[2] // 2
    with tempfile.TemporaryDirectory() as folder, running_orthanc(Path(folder) / "orthanc") as server:
        files = write_ct_series(Path(folder) / "ct", volume, SERIES_A)
        server.upload(files)
        source = DicomwebSource(server.url, study=STUDY_UID, store=True)
        report = predict_dicomweb(threshold_predictor(), source, Path(folder) / "out", Outputs(formats=formats))
        if report.failed:
            raise SystemExit(f"round trip failed: {report.failed}")
        seg = hd.seg.Segmentation.from_dataset(read_back(server, "SEG")[0])
        structures = read_back(server, "RTSTRUCT") if "rtstruct" in formats else []
    uid = f"{SERIES_A}.{k + 1}"
    frame = seg.get_pixels_by_source_instance(source_sop_instance_uids=[uid], segment_numbers=[1])[0, :, :, 0]
    image = volume[:, :, k].T  # rows = y, columns = x
    panels = 2 if structures else 1
    figure, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 4.4), squeeze=False)
    for axis in axes[0]:
        axis.imshow(image, cmap="gray", vmin=-600, vmax=300)
        axis.set_axis_off()
    red = matplotlib.colors.ListedColormap(["#e03c31"])
    axes[0][0].imshow(np.ma.masked_where(frame == 0, frame), cmap=red, alpha=0.45)
    axes[0][0].set_title(f"DICOM-SEG from Orthanc, frame of slice {k + 1}", fontsize=9)
    if structures:
        contours = structures[0].ROIContourSequence[0].ContourSequence
        for contour in contours:
            if contour.ContourImageSequence[0].ReferencedSOPInstanceUID != uid:
                continue
            points = np.asarray(contour.ContourData, dtype=float).reshape(-1, 3)
            columns, rows = (points[:, 0] + 25.0) / 0.8, (points[:, 1] + 20.0) / 0.8  # patient mm -> pixels
            axes[0][1].plot([*columns, columns[0]], [*rows, rows[0]], color="#dc2828", linewidth=1.6)
        name = structures[0].StructureSetROISequence[0].ROIName
        axes[0][1].set_title(f"RTSTRUCT from Orthanc: ROI '{name}', slice {k + 1}", fontsize=9)
    figure.tight_layout()
    target.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(target, dpi=110)
    print(f"wrote {target}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "docs" / "pacs_round_trip.png")
