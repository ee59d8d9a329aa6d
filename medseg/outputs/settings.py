"""What a prediction batch writes besides the masks, as one small frozen object (``medseg predict``'s options, or
:func:`medseg.config.settings.output_settings` from a pipeline's ``prediction`` section)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Outputs:
    """What a batch writes besides the masks (``medseg predict`` options, or the pipeline's ``prediction`` section).

    ``formats``: mask formats (``input`` = the input's own; nifti, nrrd, mha, seg.nrrd, dicom-seg); probability
    maps; ``uncertainty`` (predictive entropy maps and summary columns); per-structure ``statistics``; ``meshes``
    (3D) in ``mesh_format`` and ``mesh_space``; overlays (2D) of the first ``max_overlays`` cases; ``instances``: an
    instance map per case and a row per instance in ``statistics.csv`` (components under ``min_instance_size`` voxels
    dropped; touching objects cut by a watershed with ``split_touching``).
    """

    formats: tuple[str, ...] = ()
    probabilities: bool = False
    uncertainty: bool = False
    statistics: bool = False
    meshes: bool = False
    mesh_format: str = "stl"
    mesh_space: str = "lps"
    overlays: bool = True
    max_overlays: int = 24
    instances: bool = False
    min_instance_size: int = 10
    split_touching: bool = False

    @property
    def tables(self) -> bool:
        """Whether ``statistics.csv`` is written: asked for, or holding the instances' rows."""
        return self.statistics or self.instances

    def as_dict(self) -> dict[str, object]:
        """Plain values (to send to another process)."""
        return {name: getattr(self, name) for name in self.__dataclass_fields__}
