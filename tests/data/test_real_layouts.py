"""Real cases from ../shared/data rearranged into each layout other tools ship, in a temporary folder: ``medseg check``
reads every case of each, and one epoch of training runs from each (PH2 for the 2D layouts, BraTS for the 3D ones).

Each layout's files are written as its tool writes them: nnU-Net's dataset.json keys, labelme's JSON as labelme 5
saves it, COCO RLE through pycocotools, CVAT for images 1.1 XML.
"""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from medseg.config.loading import load_config
from medseg.config.settings import data_settings
from medseg.data.datalist import build_datalist
from tests.helpers.data import tiny_overrides

REPO = Path(__file__).resolve().parents[2]
PH2_CASES = ["IMD002", "IMD003", "IMD004", "IMD006"]
BRATS_CASES = ["brats_2013_pat0001_1", "brats_2013_pat0002_1", "brats_2013_pat0003_1"]
BRATS_LABELS = {"background": 0, "necrosis": 1, "edema": 2, "non_enhancing": 3, "enhancing": 4}


def _ph2(shared: Path, case: str) -> tuple[Path, np.ndarray]:
    image = shared / "ph2" / "images" / f"{case}.jpg"
    mask = np.asarray(Image.open(shared / "ph2" / "masks" / f"{case}.png").convert("L")) > 127
    return image, mask


def _isic(shared: Path, root: Path) -> dict[str, Any]:
    """ISIC 2018 Task 1 as downloaded: two folders with the challenge's names, ``_segmentation`` masks."""
    images, truths = root / "ISIC2018_Task1-2_Training_Input", root / "ISIC2018_Task1_Training_GroundTruth"
    for folder in (images, truths):
        folder.mkdir(parents=True)
    for case in PH2_CASES:
        image, mask = _ph2(shared, case)
        shutil.copy(image, images / f"ISIC_{case}.jpg")
        Image.fromarray((mask * 255).astype(np.uint8)).save(truths / f"ISIC_{case}_segmentation.png")
    return {}


def _nnunet_2d(shared: Path, root: Path) -> dict[str, Any]:
    """nnU-Net v2 raw, 2D: one RGB ``_0000.png`` per case (three channel_names), labels 0/1 PNG."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for case in PH2_CASES:
        image, mask = _ph2(shared, case)
        Image.open(image).save(root / "imagesTr" / f"{case}_0000.png")
        Image.fromarray(mask.astype(np.uint8)).save(root / "labelsTr" / f"{case}.png")
    description = {
        "channel_names": {"0": "R", "1": "G", "2": "B"},
        "labels": {"background": 0, "lesion": 1},
        "numTraining": len(PH2_CASES),
        "file_ending": ".png",
    }
    (root / "dataset.json").write_text(json.dumps(description, indent=4))
    return {}


def _msd_2d(shared: Path, root: Path) -> dict[str, Any]:
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for case in PH2_CASES:
        image, mask = _ph2(shared, case)
        shutil.copy(image, root / "imagesTr" / f"{case}.jpg")
        Image.fromarray((mask * 255).astype(np.uint8)).save(root / "labelsTr" / f"{case}.png")
    training = [{"image": f"./imagesTr/{c}.jpg", "label": f"./labelsTr/{c}.png"} for c in PH2_CASES]
    description = {"name": "PH2", "labels": {"0": "background", "1": "lesion"}, "training": training, "test": []}
    (root / "dataset.json").write_text(json.dumps(description, indent=4))
    return {}


def _csv_2d(shared: Path, root: Path) -> dict[str, Any]:
    root.mkdir(parents=True)
    rows = []
    for case in PH2_CASES:
        image, mask = _ph2(shared, case)
        shutil.copy(image, root / f"{case}.jpg")
        Image.fromarray((mask * 255).astype(np.uint8)).save(root / f"{case}_lesion.png")
        rows.append({"image": f"{case}.jpg", "mask": f"{case}_lesion.png"})
    with (root / "pairs.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, ["image", "mask"])
        writer.writeheader()
        writer.writerows(rows)
    return {}


def _outline(mask: np.ndarray) -> list[list[float]]:
    """The lesion's outer contour as [x, y] points (scikit-image), every 4th point."""
    from skimage.measure import find_contours

    contour = max(find_contours(mask.astype(float), 0.5), key=len)
    return [[float(x), float(y)] for y, x in contour[::4]]


def _labelme(shared: Path, root: Path) -> dict[str, Any]:
    """labelme 5: ``<case>.json`` beside ``<case>.jpg``, one polygon per lesion."""
    root.mkdir(parents=True)
    for case in PH2_CASES:
        image, mask = _ph2(shared, case)
        shutil.copy(image, root / image.name)
        shape = {
            "label": "lesion",
            "points": _outline(mask),
            "group_id": None,
            "description": "",
            "shape_type": "polygon",
            "flags": {},
            "mask": None,
        }
        document = {
            "version": "5.4.1",
            "flags": {},
            "shapes": [shape],
            "imagePath": image.name,
            "imageData": None,
            "imageHeight": mask.shape[0],
            "imageWidth": mask.shape[1],
        }
        (root / f"{case}.json").write_text(json.dumps(document, indent=2))
    return {}


def _coco(shared: Path, root: Path) -> dict[str, Any]:
    """COCO instances: RLE encoded by pycocotools, images in ``images/``."""
    from pycocotools import mask as coco_mask

    (root / "images").mkdir(parents=True)
    images, annotations = [], []
    for number, case in enumerate(PH2_CASES, start=1):
        image, mask = _ph2(shared, case)
        shutil.copy(image, root / "images" / image.name)
        rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
        rle["counts"] = rle["counts"].decode("ascii")
        images.append({"id": number, "file_name": image.name, "height": mask.shape[0], "width": mask.shape[1]})
        annotations.append(
            {
                "id": number,
                "image_id": number,
                "category_id": 3,
                "segmentation": rle,
                "area": float(coco_mask.area(coco_mask.encode(np.asfortranarray(mask.astype(np.uint8))))),
                "bbox": [
                    float(v) for v in coco_mask.toBbox(coco_mask.encode(np.asfortranarray(mask.astype(np.uint8))))
                ],
                "iscrowd": 1,
            }
        )
    document = {"images": images, "annotations": annotations, "categories": [{"id": 3, "name": "lesion"}]}
    (root / "annotations.json").write_text(json.dumps(document))
    return {}


def _cvat(shared: Path, root: Path) -> dict[str, Any]:
    """CVAT for images 1.1: ``annotations.xml`` with one polygon per image, images in ``images/``."""
    (root / "images").mkdir(parents=True)
    entries = []
    for number, case in enumerate(PH2_CASES):
        image, mask = _ph2(shared, case)
        shutil.copy(image, root / "images" / image.name)
        points = ";".join(f"{x:.2f},{y:.2f}" for x, y in _outline(mask))
        entries.append(
            f'  <image id="{number}" name="{image.name}" width="{mask.shape[1]}" height="{mask.shape[0]}">\n'
            f'    <polygon label="lesion" source="manual" occluded="0" points="{points}" z_order="0">\n'
            "    </polygon>\n  </image>"
        )
    meta = "<meta><task><labels><label><name>lesion</name><type>polygon</type></label></labels></task></meta>"
    xml = '<?xml version="1.0" encoding="utf-8"?>\n<annotations>\n  <version>1.1</version>\n  ' + meta + "\n"
    (root / "annotations.xml").write_text(xml + "\n".join(entries) + "\n</annotations>\n")
    return {}


def _side_by_side_2d(shared: Path, root: Path) -> dict[str, Any]:
    """Images beside their ``_mask`` PNGs in one folder (Kvasir-like, no sub-folders)."""
    root.mkdir(parents=True)
    for case in PH2_CASES:
        image, mask = _ph2(shared, case)
        shutil.copy(image, root / image.name)
        Image.fromarray((mask * 255).astype(np.uint8)).save(root / f"{case}_mask.png")
    return {}


def _cvat_masks(shared: Path, root: Path) -> dict[str, Any]:
    """CVAT's "Segmentation mask 1.1" export: labelmap.txt, colour class masks, the subset list, JPEGImages/."""
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / folder).mkdir(parents=True)
    (root / "labelmap.txt").write_text("# label:color_rgb:parts:actions\nbackground:0,0,0::\nlesion:250,50,83::\n")
    for case in PH2_CASES:
        image, mask = _ph2(shared, case)
        shutil.copy(image, root / "JPEGImages" / image.name)
        colour = np.zeros((*mask.shape, 3), np.uint8)
        colour[mask] = (250, 50, 83)
        Image.fromarray(colour).save(root / "SegmentationClass" / f"{case}.png")
    (root / "ImageSets" / "Segmentation" / "default.txt").write_text("\n".join(PH2_CASES) + "\n")
    return {}


def _brats(shared: Path, case: str) -> tuple[Path, Path, Path]:
    sample = shared / "brats2015-sample"
    name = f"{case}.nii.gz"
    return sample / "imagesTr" / name, sample / "imagesTr_t1c" / name, sample / "labelsTr" / name


def _nnunet_3d(shared: Path, root: Path) -> dict[str, Any]:
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for case in BRATS_CASES:
        flair, t1c, label = _brats(shared, case)
        shutil.copy(flair, root / "imagesTr" / f"{case}_0000.nii.gz")
        shutil.copy(t1c, root / "imagesTr" / f"{case}_0001.nii.gz")
        shutil.copy(label, root / "labelsTr" / f"{case}.nii.gz")
    description = {
        "channel_names": {"0": "FLAIR", "1": "T1c"},
        "labels": BRATS_LABELS,
        "numTraining": len(BRATS_CASES),
        "file_ending": ".nii.gz",
    }
    (root / "dataset.json").write_text(json.dumps(description, indent=4))
    return {}


def _msd_3d(shared: Path, root: Path) -> dict[str, Any]:
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    training = []
    for case in BRATS_CASES:
        flair, t1c, label = _brats(shared, case)
        shutil.copy(flair, root / "imagesTr" / f"{case}_flair.nii.gz")
        shutil.copy(t1c, root / "imagesTr" / f"{case}_t1c.nii.gz")
        shutil.copy(label, root / "labelsTr" / f"{case}.nii.gz")
        images = [f"./imagesTr/{case}_flair.nii.gz", f"./imagesTr/{case}_t1c.nii.gz"]
        training.append({"image": images, "label": f"./labelsTr/{case}.nii.gz"})
    description = {
        "name": "BraTS",
        "modality": {"0": "FLAIR", "1": "T1c"},
        "labels": {str(v): k for k, v in BRATS_LABELS.items()},
        "numTraining": len(training),
        "training": training,
        "test": [],
    }
    (root / "dataset.json").write_text(json.dumps(description, indent=4))
    return {}


def _folders_3d(shared: Path, root: Path) -> dict[str, Any]:
    """BraTS as the sample ships: one folder per modality."""
    for folder in ("imagesTr", "imagesTr_t1c", "labelsTr"):
        (root / folder).mkdir(parents=True)
    for case in BRATS_CASES:
        for path, folder in zip(_brats(shared, case), ("imagesTr", "imagesTr_t1c", "labelsTr"), strict=True):
            shutil.copy(path, root / folder / path.name)
    return {"layout": "folders", "modalities": ["imagesTr", "imagesTr_t1c"]}


def _csv_3d(shared: Path, root: Path) -> dict[str, Any]:
    root.mkdir(parents=True)
    with (root / "pairs.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "flair", "t1c", "label"])
        for case in BRATS_CASES:
            flair, t1c, label = _brats(shared, case)
            row = [f"{case}_flair.nii.gz", f"{case}_t1c.nii.gz", f"{case}_label.nii.gz"]
            for path, name in zip((flair, t1c, label), row, strict=True):
                shutil.copy(path, root / name)
            writer.writerow([case, *row])
    return {"modalities": ["flair", "t1c"]}


def _volumes_3d(shared: Path, root: Path) -> dict[str, Any]:
    """Single-channel scans and labels in sibling folders named by their content (``scans/``, ``labels/``)."""
    for folder in ("scans", "labels"):
        (root / folder).mkdir(parents=True)
    for case in BRATS_CASES:
        flair, _, label = _brats(shared, case)
        shutil.copy(flair, root / "scans" / f"{case}.nii.gz")
        shutil.copy(label, root / "labels" / f"{case}_seg.nii.gz")
    return {"in_channels": 1}


def _slicer_3d(shared: Path, root: Path) -> dict[str, Any]:
    """A 3D Slicer export: ``<case>.nrrd`` scans beside ``<case>.seg.nrrd`` segmentations with named segments (the
    tumour core, oedema and enhancing tumour, as the multi-class brain pipeline names its classes)."""
    import SimpleITK as sitk

    from medseg.imageio.headers import read_header
    from medseg.imageio.readers import read_label_on_grid
    from medseg.imageio.slicer import write_seg_nrrd
    from medseg.labels import Label

    root.mkdir(parents=True)
    classes = {"core": 1, "edema": 2, "enhancing": 3}
    for case in BRATS_CASES:
        flair, _, label = _brats(shared, case)
        scan = root / f"{case}.nrrd"
        sitk.WriteImage(sitk.ReadImage(str(flair)), str(scan), useCompression=True)
        header = read_header(scan)
        raw = read_label_on_grid(label, header)
        values = np.select([np.isin(raw, (1, 3)), raw == 2, raw == 4], [1, 2, 3], 0).astype(np.uint8)
        segments = [Label(v, name, (80 * v, 200, 255 - 80 * v)) for name, v in classes.items()]
        write_seg_nrrd(values, header, segments, root / f"{case}.seg.nrrd")
    labels = {v: name for name, v in classes.items()}
    return {"in_channels": 1, "out_channels": 4, "labels": labels, "label_mapping": {1: 1, 2: 2, 3: 3}}


#: variant -> (how the cases are laid out, the layout ``auto`` must choose)
LAYOUTS_2D: dict[str, tuple[Callable[[Path, Path], dict[str, Any]], str]] = {
    "isic": (_isic, "folder"),
    "side-by-side": (_side_by_side_2d, "folder"),
    "cvat-masks": (_cvat_masks, "cvat_masks"),
    "nnunet": (_nnunet_2d, "nnunet"),
    "msd": (_msd_2d, "msd"),
    "csv": (_csv_2d, "csv"),
    "labelme": (_labelme, "labelme"),
    "coco": (_coco, "coco"),
    "cvat": (_cvat, "cvat"),
}
LAYOUTS_3D: dict[str, tuple[Callable[[Path, Path], dict[str, Any]], str]] = {
    "scans-labels": (_volumes_3d, "volumes"),
    "slicer": (_slicer_3d, "volumes"),
    "nnunet": (_nnunet_3d, "nnunet"),
    "msd": (_msd_3d, "msd"),
    "folders": (_folders_3d, "folders"),
    "csv": (_csv_3d, "csv"),
}


def _overrides(tmp_path: Path, root: Path, data: dict[str, Any]) -> list[str]:
    return [
        *(f"data.{key}={json.dumps(value)}" for key, value in data.items()),
        f"data.root={root.parent}",
        f"data.dataset_dir={root.name}",
        f"data.cache_dir={tmp_path / 'cache'}",
        f"data.split.file={tmp_path / 'splits.json'}",
        f"output_root={tmp_path / 'runs'}",
        f"tracking.uri=sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}",
        "training.epochs=1",
        "training.max_minutes=null",
        "schedule.length=epochs",
        "training.bf16=true",
        "stages=[train]",
    ]


def _checked_then_trained(
    tmp_path: Path,
    pipeline: str,
    layout: str,
    data: dict[str, Any],
    ids: list[str],
    dims: int,
    model: dict[str, int] | None = None,
) -> None:
    from medseg.pipeline.run import run_pipeline

    root = tmp_path / "dataset"
    extra = (
        tiny_overrides(tmp_path, root)[4:8]
        if dims == 2
        else ["preprocessing.spacing=[3.0, 3.0, 3.0]", "preprocessing.patch_size=[16, 16, 16]"]
    )
    extra += ["model.args.channels=[8, 16, 32]", "model.args.strides=[2, 2]"]
    extra += [f"model.{key}={value}" for key, value in (model or {}).items()]
    cfg = load_config(REPO / "pipelines" / pipeline, [*_overrides(tmp_path, root, data), *extra])
    report = build_datalist(data_settings(cfg), root).check
    assert report.layout == layout and not report.errors, report.summary()
    assert sorted(r["id"] for r in report.records) == sorted(ids)
    result = run_pipeline(cfg, run_name=layout)
    history = json.loads((result.run_dir / "history.json").read_text())
    assert len(history) == 1 and np.isfinite(history[0]["train_loss"])


@pytest.mark.slow
@pytest.mark.parametrize("variant", sorted(LAYOUTS_2D))
def test_ph2_cases_rearranged_into_each_2d_layout_are_read_and_train(
    tmp_path: Path, shared_data: Path, variant: str
) -> None:
    make, layout = LAYOUTS_2D[variant]
    data = make(shared_data, tmp_path / "dataset")
    ids = [f"ISIC_{c}" for c in PH2_CASES] if variant == "isic" else PH2_CASES
    _checked_then_trained(tmp_path, "skin_lesion.yaml", layout, {"layout": "auto", **data}, ids, 2)


@pytest.mark.slow
@pytest.mark.parametrize("variant", sorted(LAYOUTS_3D))
def test_brats_cases_rearranged_into_each_3d_layout_are_read_and_train(
    tmp_path: Path, shared_data: Path, variant: str
) -> None:
    make, layout = LAYOUTS_3D[variant]
    data = make(shared_data, tmp_path / "dataset")
    model = {"in_channels": data.pop("in_channels", 2), "out_channels": data.pop("out_channels", 1)}
    settings = {"layout": "auto", "modalities": [], **data}
    _checked_then_trained(tmp_path, "brain_tumor_mri.yaml", layout, settings, BRATS_CASES, 3, model)


def test_a_dicom_seg_of_a_real_ct_series_is_read_as_its_label(tmp_path: Path, shared_data: Path) -> None:
    """The CT series' reference labels written as a DICOM-SEG (medseg's writer, highdicom), then read back as the
    case's training label: the check reads it and the cached label map equals the reference voxel for voxel."""
    import nibabel as nib
    import pydicom
    from pydicom.uid import generate_uid

    from medseg.config.schema import PipelineConfig
    from medseg.data.check import check_dataset
    from medseg.imageio.dicom_seg import write_dicom_seg
    from medseg.imageio.headers import read_header
    from medseg.imageio.readers import read_label_on_grid
    from medseg.labels import Label

    source = shared_data / "ct-mr-examples" / "dicom"
    series = tmp_path / "pacs" / "ct"
    series.mkdir(parents=True)
    study, series_uid = generate_uid(), generate_uid()  # the shared copy is anonymised down to no study/series UIDs
    for path in sorted((source / "ct_series").iterdir()):
        dataset = pydicom.dcmread(path)
        dataset.StudyInstanceUID, dataset.SeriesInstanceUID = study, series_uid
        dataset.save_as(series / path.name)
    header = read_header(series)
    reference = read_label_on_grid(source / "ct_series_seg.nii.gz", header).astype(np.uint8)
    present = sorted(int(v) for v in np.unique(reference) if v)[:3]
    kept = np.where(np.isin(reference, present), reference, 0).astype(np.uint8)
    labels = [Label(v, f"structure_{v}", (60 * n, 120, 200)) for n, v in enumerate(present)]
    write_dicom_seg(kept, header, labels, tmp_path / "pacs" / "seg" / "seg.dcm")
    cfg = PipelineConfig(
        name="t",
        spatial_dims=3,
        model={"in_channels": 1, "out_channels": len(present) + 1},
        preprocessing={"intensity": {"kind": "ct"}},
        data={
            "cache_dir": str(tmp_path / "cache"),
            "cases": [{"id": "ct", "image": ["ct"], "label": "seg"}],
            "labels": {v: label.name for v, label in zip(range(1, len(present) + 1), labels, strict=True)},
            "label_mapping": {v: v for v in range(1, len(present) + 1)},
        },
    )
    report = check_dataset(data_settings(cfg), tmp_path / "pacs")
    assert not report.errors and [r["id"] for r in report.records] == ["ct"]
    read = np.asarray(nib.load(report.records[0]["label"]).dataobj)
    expected = np.select([kept == v for v in present], list(range(1, len(present) + 1)), 0)
    np.testing.assert_array_equal(read, expected)
