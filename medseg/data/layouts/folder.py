"""The ``folder`` layout (2D): ``<images_dir>/<id>.<ext>`` and ``<masks_dir>/<id><suffix>.<ext>``, matched by name
with the first of ``data.mask_suffixes`` that exists (PH2: suffix "", ISIC: "_segmentation").

Where ``data.images_dir`` is not there, the two folders are found by content, whatever they are called (ISIC as
downloaded: ``ISIC2018_Task1-2_Training_Input/`` and ``ISIC2018_Task1_Training_GroundTruth/``; CVC-ClinicDB:
``Original/`` and ``Ground Truth/``): the pair of sibling folders whose images match the most masks by name; where
both ways match equally, the folder whose name says mask, label, seg(mentation), ground truth or annotation holds the
masks; where that still leaves two candidates, the error names them and the keys that choose."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from medseg.core.errors import DataError
from medseg.data.layouts.base import Cases, Layout, LayoutSettings
from medseg.data.records import Finding, Record
from medseg.imageio.formats import IMAGE_2D_SUFFIXES, is_image_2d

log = logging.getLogger(__name__)


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


#: mask name endings tried besides ``data.mask_suffixes`` when the folders are found by content
KNOWN_SUFFIXES = ("", "_segmentation", "_Segmentation", "_mask", "_seg", "_label", "_lesion", "_gt")
MASK_FOLDER_WORDS = ("mask", "label", "seg", "truth", "gt", "annotation")


def _stems(folder: Path) -> set[str]:
    return {p.stem for p in folder.iterdir() if is_image_2d(p) and p.is_file()}


def folders_by_content(folder: Path, suffixes: tuple[str, ...]) -> tuple[Path, Path] | None:
    """(images folder, masks folder) among ``folder``'s subfolders, chosen by which images match masks by name (see
    the module's docstring); None when no pair matches; DataError when two pairs fit equally."""
    if not folder.is_dir():
        return None
    candidates = {p: _stems(p) for p in sorted(folder.iterdir()) if p.is_dir() and not p.name.startswith(".")}
    candidates = {p: stems for p, stems in candidates.items() if stems}
    tried = tuple(dict.fromkeys((*suffixes, *KNOWN_SUFFIXES)))
    scores = {
        (images, masks): sum(any(stem + s in candidates[masks] for s in tried) for stem in candidates[images])
        for images in candidates
        for masks in candidates
        if images != masks
    }
    best = max(scores.values(), default=0)
    if best == 0:
        return None
    top = [pair for pair, score in scores.items() if score == best]
    named = [pair for pair in top if any(w in pair[1].name.lower() for w in MASK_FOLDER_WORDS)]
    named = [pair for pair in named if not any(w in pair[0].name.lower() for w in MASK_FOLDER_WORDS)] or named
    chosen = named if len(named) == 1 else top
    if len(chosen) > 1:
        shown = " or ".join(f"{a.name}/ + {b.name}/" for a, b in chosen[:2])
        raise DataError(
            f"{folder}: the images and masks could be {shown}; set data.images_dir and data.masks_dir to choose"
        )
    return chosen[0]


class FolderLayout(Layout):
    name = "folder"
    spatial_dims = (2,)

    def detect(self, folder: Path, settings: LayoutSettings) -> bool:
        return (folder / settings.images_dir).is_dir()  # (the 2D fallback: find() looks for folders by content)

    def find(self, folder: Path, settings: LayoutSettings, findings: list[Finding] | None = None) -> Cases:
        """Images and masks matched by name; with ``findings``, an image without its mask is recorded there and
        left out instead of stopping the search."""
        recorded = len(findings) if findings is not None else 0
        image_dir = folder / settings.images_dir
        if not image_dir.is_dir():
            found = folders_by_content(folder, settings.mask_suffixes)
            if found is not None:
                image_dir, mask_dir = found
                log.info("Images in %s, masks in %s (found by their names)", image_dir, mask_dir)
                suffixes = tuple(dict.fromkeys((*settings.mask_suffixes, *KNOWN_SUFFIXES)))
                settings = replace(settings, images_dir=image_dir.name, masks_dir=mask_dir.name, mask_suffixes=suffixes)
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
