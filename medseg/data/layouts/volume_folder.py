"""The ``volumes`` layout (3D): single-channel scans and their labels found by their names, whatever the folders are
called; ``auto`` takes it where no other 3D layout finds its files.

- Sibling folders (``scans/`` + ``labels/``, ``images/`` + ``masks/``, ``volumes/`` + ``segmentations/``, nnU-Net-like
  folders without ``imagesTr``: ``<case>_0000`` scans beside ``<case>`` labels): ``data.images_dir`` and
  ``data.labels_dir`` where both are there, else the pair whose names match most, then the folder named for labels,
  chosen as the 2D ``folder`` layout chooses (:func:`.folder.pair_folders`); two equal candidates are an error naming
  both and the keys that choose.
- Side by side in the dataset folder: ``<case>.nii.gz`` beside ``<case>_seg.nii.gz`` (``.nii``, ``.nrrd``, ``.mha``
  alike), and a 3D Slicer export, ``<case>.nrrd`` beside ``<case>.seg.nrrd``.

A label is ``<case>`` + a suffix (``data.mask_suffixes``, then ``""``, ``_seg``, ``_label``, ``_mask``,
``_segmentation``...; ``.seg`` for Slicer). A scan without a label is unlabelled: a warning, left out. Multi-channel
scans are read by the ``folders``, ``nnunet`` and ``msd`` layouts.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from medseg.core.errors import DataError
from medseg.data.layouts.annotated import Problems
from medseg.data.layouts.base import Cases, Layout, LayoutSettings, index_volumes
from medseg.data.layouts.folder import label_name, pair_folders, side_by_side, with_known_suffixes
from medseg.data.records import Finding, Record
from medseg.imageio.formats import VOLUME_SUFFIXES, volume_id

log = logging.getLogger(__name__)

SLICER_SUFFIX = ".seg"  # <case>.seg.nrrd: a 3D Slicer segmentation of <case>.nrrd
_FIRST_CHANNEL = re.compile(r"^(?P<case>.+)_0000$")  # nnU-Net's channel 0 of a single-channel scan


def _name(path: Path) -> str:
    """A volume's name without its ending; a Slicer segmentation keeps ``.seg`` (``a.seg.nrrd`` -> ``a.seg``)."""
    if path.name.lower().endswith(SLICER_SUFFIX + ".nrrd"):
        return path.name[: -len(".seg.nrrd")] + SLICER_SUFFIX
    return volume_id(path)


def _volumes(folder: Path) -> dict[str, Path]:
    """name -> volume file in ``folder`` (hidden names skipped); DataError for two files with one name."""
    return index_volumes(folder, allow_series=False, name=_name)


def _scans(folder: Path) -> dict[str, Path]:
    """case -> scan in a scans folder (``<case>_0000`` is ``<case>``); DataError for a second channel."""
    volumes = _volumes(folder)
    second = next((p for n, p in volumes.items() if n.endswith("_0001") and f"{n[:-5]}_0000" in volumes), None)
    if second is not None:
        raise DataError(
            f"{second}: a second channel; the volumes layout reads single-channel scans (multi-channel: imagesTr/ "
            "for the nnunet layout, or one folder per modality named in data.modalities)"
        )
    return {(match["case"] if (match := _FIRST_CHANNEL.match(n)) else n): p for n, p in volumes.items()}


def _names_in(folder: Path) -> set[str]:
    try:
        return set(_scans(folder))
    except DataError:
        return set()


class VolumeFolderLayout(Layout):
    name = "volumes"
    spatial_dims = (3,)
    evidence = "scans and labels matched by their names"
    by_content = True

    def detect(self, folder: Path, settings: LayoutSettings) -> bool:
        if not folder.is_dir():
            return False
        try:
            suffixes = with_known_suffixes(settings.mask_suffixes, SLICER_SUFFIX)
            return self._folders(folder, settings) is not None or bool(side_by_side(_volumes(folder), suffixes)[0])
        except DataError:
            return True  # two folders fit equally, or a bad name: find() says which

    def find(self, folder: Path, settings: LayoutSettings, findings: list[Finding] | None = None) -> Cases:
        """The scans with a label; with ``findings``, those without one are recorded there (warnings)."""
        problems = Problems(findings)
        suffixes = with_known_suffixes(settings.mask_suffixes, SLICER_SUFFIX)
        found = self._folders(folder, settings)
        if found is not None:
            scans_dir, labels_dir = found
            log.info("Scans in %s, labels in %s (found by their names)", scans_dir, labels_dir)
            scans, labels = _scans(scans_dir), _volumes(labels_dir)
            pairs = {case: name for case in scans if (name := label_name(case, labels, suffixes)) is not None}
            unused = sorted(set(labels) - set(pairs.values()))
            where = labels_dir
        else:
            labels = _volumes(folder)
            pairs, unlabelled, unused = side_by_side(labels, suffixes)
            if not pairs:
                raise DataError(
                    f"{folder}: no scans with labels found (looked for sibling folders of scans and labels, or "
                    f"<case><ending> beside <case>_seg<ending>, endings {', '.join(VOLUME_SUFFIXES)})"
                )
            log.info("Scans and labels side by side in %s (found by their names)", folder)
            scans = {name: labels[name] for name in [*pairs, *unlabelled]}
            where = folder
        records: list[Record] = []
        for case, scan in sorted(scans.items()):
            if case not in pairs:
                problems.warning(case, "unlabelled", f"{scan}: no label found in {where} (left out)", scan)
                continue
            records.append({"id": case, "image": [str(scan)], "label": str(labels[pairs[case]])})
        return Cases(records, self.name, folder, channels=1, unmatched_masks=unused)

    @staticmethod
    def _folders(folder: Path, settings: LayoutSettings) -> tuple[Path, Path] | None:
        """(scans folder, labels folder): the configured ones where both are there, else found by content."""
        configured = folder / settings.images_dir, folder / settings.labels_dir
        if configured[0] != configured[1] and all(p.is_dir() for p in configured):
            return configured
        suffixes = with_known_suffixes(settings.mask_suffixes, SLICER_SUFFIX)
        keys = ("data.images_dir", "data.labels_dir")
        return pair_folders(folder, _names_in, suffixes, ("scans", "labels"), keys)
