"""The ``cvat_masks`` layout (2D): CVAT's "Segmentation mask 1.1" export (Datumaro's Pascal VOC segmentation).

``labelmap.txt`` (the colour table: ``# label:color_rgb:parts:actions``, then ``name:r,g,b::``),
``SegmentationClass/<name>.png`` (one colour per label), ``ImageSets/Segmentation/<subset>.txt`` (the case names,
``default.txt`` or ``train.txt``, ``val.txt``...: every subset file, in name order; without them, every class mask)
and the images in ``JPEGImages/`` (exported "with images"), else in ``data.images_dir``. ``SegmentationObject/``
(instance masks) is not read. The colour masks become cached index masks (:mod:`.colour_masks`); ``data.label_colors``
overrides ``labelmap.txt``.

A listed name without its class mask is unlabelled (a warning, left out); one without its image is an error.
"""

from __future__ import annotations

from pathlib import Path

from medseg.core.errors import DataError
from medseg.data.layouts.annotated import Problems
from medseg.data.layouts.base import Cases, Layout, LayoutSettings
from medseg.data.layouts.colour_masks import LABELMAP_FILE, indexed_cases
from medseg.data.records import Finding, Record
from medseg.imageio.formats import IMAGE_2D_SUFFIXES

CLASS_MASKS = "SegmentationClass"
SUBSETS = Path("ImageSets") / "Segmentation"
IMAGES = "JPEGImages"
_ENDINGS = (*IMAGE_2D_SUFFIXES, *(s.upper() for s in IMAGE_2D_SUFFIXES))


def _case_names(folder: Path) -> list[str]:
    """The names the subset files list (each once, in order), else the class masks' names."""
    subsets = sorted((folder / SUBSETS).glob("*.txt")) if (folder / SUBSETS).is_dir() else []
    if not subsets:
        return sorted(p.stem for p in (folder / CLASS_MASKS).glob("*.png"))
    names: dict[str, None] = {}
    for subset in subsets:
        try:
            lines = subset.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"{subset}: cannot read ({exc})") from None
        names.update(dict.fromkeys(line.strip() for line in lines if line.strip()))
    return list(names)


class CvatMasksLayout(Layout):
    name = "cvat_masks"
    spatial_dims = (2,)
    evidence = f"{LABELMAP_FILE} and {CLASS_MASKS}/ (CVAT Segmentation mask 1.1)"

    def detect(self, folder: Path, settings: LayoutSettings) -> bool:
        return (folder / LABELMAP_FILE).is_file() and (folder / CLASS_MASKS).is_dir()

    def find(self, folder: Path, settings: LayoutSettings, findings: list[Finding] | None = None) -> Cases:
        """The listed images with their class masks, as index masks."""
        problems = Problems(findings)
        places = [folder / IMAGES, folder / settings.images_dir]
        records: list[Record] = []
        for name in _case_names(folder):
            case = name.replace("/", "_")  # CVAT keeps an image's subfolders in its name
            mask = folder / CLASS_MASKS / f"{name}.png"
            if not mask.is_file():
                problems.warning(case, "unlabelled", f"{mask}: no class mask for image {name!r} (left out)", mask)
                continue
            image = next((p / f"{name}{e}" for p in places for e in _ENDINGS if (p / f"{name}{e}").is_file()), None)
            if image is None:
                looked = " or ".join(str(p) for p in places)
                problems.error(case, "missing image", f"{mask}: no image {name}.* in {looked}", mask)
                continue
            records.append({"id": case, "image": str(image), "label": str(mask)})
        if not records and not problems.errors:
            raise DataError(f"{folder / CLASS_MASKS}: no class masks found for the listed images (cvat_masks layout)")
        return indexed_cases(Cases(records, self.name, folder), settings, [folder], findings)
