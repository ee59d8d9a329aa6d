"""The ``folder`` layout (2D): ``<images_dir>/<id>.<ext>`` and ``<masks_dir>/<id><suffix>.<ext>``, matched by name
with the first of ``data.mask_suffixes`` that exists (PH2: suffix "", ISIC: "_segmentation").

Where ``data.images_dir`` is not there, the two folders are found by content, whatever they are called (ISIC as
downloaded: ``ISIC2018_Task1-2_Training_Input/`` and ``ISIC2018_Task1_Training_GroundTruth/``; CVC-ClinicDB:
``Original/`` and ``Ground Truth/``): the pair of sibling folders whose images match the most masks by name; where
both ways match equally, the folder whose name says mask, label, seg(mentation), ground truth or annotation holds the
masks; where that still leaves two candidates, the error names them and the keys that choose.

Where there are no such folders, images and masks side by side in the dataset folder itself are found by content
too (``case1.png`` beside ``case1_mask.png``): a file is a mask when another file's name plus a known suffix (not "")
is its name; the other files are images, and an image without a mask is unlabelled (a warning, left out).

Colour-coded masks (a colour table in ``data.label_colors`` or a CVAT ``labelmap.txt`` beside the masks folder or in
the dataset folder) become index masks once, cached: :mod:`.colour_masks`.

The matching (known suffixes, folder words, :func:`pair_folders`, :func:`side_by_side`) is shared with the 3D
:mod:`.volume_folder` layout."""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import replace
from pathlib import Path

from medseg.core.errors import DataError
from medseg.data.layouts.annotated import Problems
from medseg.data.layouts.base import Cases, Layout, LayoutSettings
from medseg.data.layouts.colour_masks import indexed_cases
from medseg.data.records import Finding, Record
from medseg.imageio.formats import IMAGE_2D_SUFFIXES, is_image_2d

log = logging.getLogger(__name__)

#: label name endings tried besides ``data.mask_suffixes`` when images and labels are found by content (2D and 3D)
KNOWN_SUFFIXES = ("", "_segmentation", "_Segmentation", "_mask", "_seg", "_label", "_lesion", "_gt")
#: image name endings that side-by-side labels do not repeat (``brain1_image.nrrd`` beside ``brain1_label.nrrd``)
IMAGE_SUFFIXES = ("_image", "_img", "_scan", "_volume", "_ct", "_mr", "_mri")
#: words in a folder's name that say it holds the masks (labels)
MASK_FOLDER_WORDS = ("mask", "label", "seg", "truth", "gt", "annotation")


def with_known_suffixes(suffixes: Iterable[str], *more: str) -> tuple[str, ...]:
    """``suffixes`` (the configured ones, tried first), then the known ones and ``more``, each once."""
    return tuple(dict.fromkeys((*suffixes, *KNOWN_SUFFIXES, *more)))


def label_name(name: str, labels: Collection[str], suffixes: Sequence[str]) -> str | None:
    """The first of ``name`` + each suffix that is among ``labels``, or None."""
    return next((name + s for s in suffixes if name + s in labels), None)


def pair_folders(
    folder: Path,
    names_in: Callable[[Path], set[str]],
    suffixes: Sequence[str],
    what: tuple[str, str],
    keys: tuple[str, str],
) -> tuple[Path, Path] | None:
    """(images folder, labels folder) among ``folder``'s subfolders, chosen by which images match labels by name:
    the pair matching most, then the folder named for labels (:data:`MASK_FOLDER_WORDS`); None when no pair
    matches.

    Args:
        names_in: the names (without ending) of a folder's image or label files.
        what: what the two folders hold, for the error ("images", "masks").
        keys: the configuration keys that name the two folders, for the error.

    Raises:
        DataError: two pairs fit equally; it names both and ``keys``.
    """
    if not folder.is_dir():
        return None
    candidates = {p: names_in(p) for p in sorted(folder.iterdir()) if p.is_dir() and not p.name.startswith(".")}
    candidates = {p: names for p, names in candidates.items() if names}
    scores = {
        (images, labels): sum(label_name(name, candidates[labels], suffixes) is not None for name in candidates[images])
        for images in candidates
        for labels in candidates
        if images != labels
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
            f"{folder}: the {what[0]} and {what[1]} could be {shown}; set {keys[0]} and {keys[1]} to choose"
        )
    return chosen[0]


def side_by_side(names: Iterable[str], suffixes: Sequence[str]) -> tuple[dict[str, str], list[str], list[str]]:
    """Images and labels in one folder, told apart by name: a name is a label when another name, or the base of one
    named ``<base>_image`` (:data:`IMAGE_SUFFIXES`), plus one of ``suffixes`` (not "") is that name; the others are
    images (``a.png`` + ``a_mask.png``; ``brain1_image.nrrd`` + ``brain1_label.nrrd``).

    Returns:
        image name -> its label's name, the images without a label, the labels no image uses (all sorted).
    """
    names = set(names)
    suffixes = [s for s in suffixes if s]
    bases = {image: _bases(image) for image in names}
    stems = {base for found in bases.values() for base in found}
    labels = {n for n in names for s in suffixes if n.endswith(s) and n[: len(n) - len(s)] in stems}
    pairs: dict[str, str] = {}
    unlabelled = []
    for image in sorted(names - labels):
        label = next((found for b in bases[image] if (found := label_name(b, labels, suffixes))), None)
        if label is None:
            unlabelled.append(image)
        else:
            pairs[image] = label
    return pairs, unlabelled, sorted(labels - set(pairs.values()))


def _bases(name: str) -> list[str]:
    """``name``, then ``name`` without an image suffix it ends with."""
    return [name, *(name[: len(name) - len(s)] for s in IMAGE_SUFFIXES if name.endswith(s) and name != s)]


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


def _stems(folder: Path) -> set[str]:
    return {p.stem for p in folder.iterdir() if is_image_2d(p) and p.is_file()}


def folders_by_content(folder: Path, suffixes: tuple[str, ...]) -> tuple[Path, Path] | None:
    """(images folder, masks folder) among ``folder``'s subfolders, chosen by which images match masks by name (see
    the module's docstring); None when no pair matches; DataError when two pairs fit equally."""
    keys = ("data.images_dir", "data.masks_dir")
    return pair_folders(folder, _stems, with_known_suffixes(suffixes), ("images", "masks"), keys)


class FolderLayout(Layout):
    name = "folder"
    spatial_dims = (2,)
    evidence = "an images folder (data.images_dir)"
    by_content = True

    def detect(self, folder: Path, settings: LayoutSettings) -> bool:
        return (folder / settings.images_dir).is_dir()  # (the 2D fallback: find() looks for folders by content)

    def find(self, folder: Path, settings: LayoutSettings, findings: list[Finding] | None = None) -> Cases:
        """Images and masks matched by name; with ``findings``, an image without its mask is recorded there and
        left out instead of stopping the search."""
        image_dir = folder / settings.images_dir
        if not image_dir.is_dir():
            found = folders_by_content(folder, settings.mask_suffixes)
            if found is not None:
                image_dir, mask_dir = found
                log.info("Images in %s, masks in %s (found by their names)", image_dir, mask_dir)
                suffixes = with_known_suffixes(settings.mask_suffixes)
                settings = replace(settings, images_dir=image_dir.name, masks_dir=mask_dir.name, mask_suffixes=suffixes)
            elif folder.is_dir() and side_by_side(_stems(folder), with_known_suffixes(settings.mask_suffixes))[0]:
                return self._side_by_side(folder, settings, findings)
        cases = self._in_folders(folder, settings, findings)
        mask_dir = folder / settings.masks_dir
        return indexed_cases(cases, settings, [mask_dir, mask_dir.parent, folder], findings)

    def _in_folders(self, folder: Path, settings: LayoutSettings, findings: list[Finding] | None) -> Cases:
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

    def _side_by_side(self, folder: Path, settings: LayoutSettings, findings: list[Finding] | None) -> Cases:
        """Images and masks in ``folder`` itself (see the module's docstring)."""
        problems = Problems(findings)
        files: dict[str, Path] = {}
        for path in _images_in(folder, findings):
            if path.stem in files:
                problems.error(
                    path.stem, "ambiguous file", f"{path}: ambiguous, {files[path.stem].name} has the same name", path
                )
                continue
            files[path.stem] = path
        pairs, unlabelled, unused = side_by_side(files, with_known_suffixes(settings.mask_suffixes))
        log.info("Images and masks side by side in %s (%d pairs, found by their names)", folder, len(pairs))
        for image in unlabelled:
            problems.warning(image, "unlabelled", f"{files[image]}: no mask beside this image (left out)", files[image])
        records: list[Record] = [
            {"id": image, "image": str(files[image]), "label": str(files[mask])} for image, mask in pairs.items()
        ]
        cases = Cases(records, self.name, folder, unmatched_masks=unused)
        return indexed_cases(cases, settings, [folder], findings)
