"""The ``folder`` layout (2D): ``<images_dir>/<id>.<ext>`` and ``<masks_dir>/<id><suffix>.<ext>``, matched by name
with the first of ``data.mask_suffixes`` that exists (PH2: suffix "", ISIC: "_segmentation")."""

from __future__ import annotations

from pathlib import Path

from medseg.core.errors import DataError
from medseg.data.layouts.base import Cases, Layout, LayoutSettings
from medseg.data.records import Finding, Record
from medseg.imageio.formats import IMAGE_2D_SUFFIXES, is_image_2d


def _images_in(folder: Path, findings: list[Finding] | None = None) -> list[Path]:
    if not folder.is_dir():
        raise DataError(f"{folder}: image folder not found")
    images = sorted(p for p in folder.iterdir() if is_image_2d(p) and not p.is_dir())
    for broken in [p for p in images if not p.is_file()]:  # a dangling or looping symbolic link
        message = f"{broken}: broken symbolic link (its target is missing or it links to itself)"
        if findings is None:
            raise DataError(message)
        findings.append(Finding("error", broken.stem, "unreadable", message, str(broken)))
    return [p for p in images if p.is_file()]


class FolderLayout(Layout):
    name = "folder"
    spatial_dims = (2,)

    def detect(self, folder: Path, settings: LayoutSettings) -> bool:
        return (folder / settings.images_dir).is_dir()

    def find(self, folder: Path, settings: LayoutSettings, findings: list[Finding] | None = None) -> Cases:
        """Images and masks matched by name; with ``findings``, an image without its mask is recorded there and
        left out instead of stopping the search."""
        recorded = len(findings) if findings is not None else 0
        image_dir = folder / settings.images_dir
        images = _images_in(image_dir, findings)
        if not images and (findings is None or len(findings) == recorded):  # not even a broken link to report
            raise DataError(f"{image_dir}: no images found (looked for {', '.join(IMAGE_2D_SUFFIXES)})")
        mask_dir = folder / settings.masks_dir
        if not mask_dir.is_dir():
            raise DataError(f"{mask_dir}: mask folder not found")
        masks: dict[str, Path] = {}
        for mask in _images_in(mask_dir, findings):
            if mask.stem in masks:
                message = f"{mask}: ambiguous mask, {masks[mask.stem].name} has the same name"
                if findings is None:
                    raise DataError(message)
                findings.append(Finding("error", mask.stem, "ambiguous mask", message, str(mask)))
                continue
            masks[mask.stem] = mask
        records: list[Record] = []
        used = set()
        for image in images:
            match = next((masks[image.stem + s] for s in settings.mask_suffixes if image.stem + s in masks), None)
            if match is None:
                tried = ", ".join(f"{image.stem}{s}.*" for s in settings.mask_suffixes)
                message = f"{image}: no mask found in {mask_dir} (tried {tried})"
                if findings is None:
                    raise DataError(message)
                findings.append(Finding("error", image.stem, "missing mask", message, str(image)))
                continue
            used.add(match.stem)
            records.append({"id": image.stem, "image": str(image), "label": str(match)})
        return Cases(records, self.name, folder, unmatched_masks=sorted(set(masks) - used))
