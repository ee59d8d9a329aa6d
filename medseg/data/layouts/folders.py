"""The ``folders`` layout (3D, e.g. BraTS): one folder per modality, named by ``data.modalities`` in channel order,
each holding ``<id><volume ending>`` or a DICOM series folder ``<id>/``; labels in ``<labels_dir>/<id>.<ending>``.
The cases are those of the first modality's folder."""

from __future__ import annotations

from pathlib import Path

from medseg.core.errors import DataError
from medseg.data.layouts.base import Cases, Layout, LayoutSettings, index_volumes, labels_index
from medseg.data.records import Finding, Record
from medseg.imageio.formats import VOLUME_SUFFIXES, volume_suffix


def _expected_path(folder: Path, case: str, like: Path) -> Path:
    """Where ``case`` would be in ``folder``, with the same ending as ``like``."""
    return folder / f"{case}{'' if like.is_dir() else volume_suffix(like.name)}"


class FoldersLayout(Layout):
    name = "folders"
    spatial_dims = (3,)
    by_content = True  # a dataset.json or CSV naming its columns by data.modalities wins
    evidence = "data.modalities names the modality folders"

    def detect(self, folder: Path, settings: LayoutSettings) -> bool:
        return bool(settings.modalities)  # the pipeline names the folders

    def find(self, folder: Path, settings: LayoutSettings, findings: list[Finding] | None = None) -> Cases:
        modalities = settings.modalities
        if not modalities:
            raise DataError(
                f"{folder}: the folders layout needs modalities (the image folder names, e.g. ['imagesTr'])"
            )
        indexes = []
        for name in modalities:
            if not (folder / name).is_dir():
                raise DataError(f"{folder / name}: modality folder not found")
            indexes.append(index_volumes(folder / name, allow_series=True))
        first_folder, first = folder / modalities[0], indexes[0]
        if not first:
            raise DataError(
                f"{first_folder}: no volumes found (looked for {', '.join(VOLUME_SUFFIXES)} or DICOM folders)"
            )
        labels = labels_index(folder / settings.labels_dir)
        records: list[Record] = []
        for case in sorted(first):
            images = []
            for name, index in zip(modalities, indexes, strict=True):
                if case not in index:
                    expected = _expected_path(folder / name, case, first[case])
                    raise DataError(
                        f"{expected}: file not found (case {case!r} is in {first_folder} but not in {name})"
                    )
                images.append(str(index[case]))
            if case not in labels:
                expected = _expected_path(folder / settings.labels_dir, case, first[case])
                raise DataError(f"{expected}: label file not found for case {case!r}")
            records.append({"id": case, "image": images, "label": str(labels[case])})
        return Cases(records, self.name, folder)
