"""What the evaluate stage reads, as one small frozen object (:func:`medseg.config.settings.evaluation_settings`
builds it from a pipeline configuration)."""

from __future__ import annotations

from dataclasses import dataclass, field

from medseg.labels import LabelScheme
from medseg.transforms.settings import LabelRemap


@dataclass(frozen=True)
class EvaluationSettings:
    """``labels``: what the label maps mean (structures, ignored voxels); ``truth``: how reference labels are remapped
    as in training (regions keep their raw values); ``jaccard_threshold``: 2D thresholded Jaccard; ``split``: the
    cases' name in the summary."""

    spatial_dims: int = 2
    labels: LabelScheme = field(default_factory=LabelScheme)
    truth: LabelRemap = field(default_factory=LabelRemap)
    jaccard_threshold: float = 0.65
    split: str = "test"
