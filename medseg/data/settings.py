"""What the data layer reads, as one small frozen object (:func:`medseg.config.settings.data_settings` builds it from a
pipeline configuration)."""

from __future__ import annotations

from dataclasses import dataclass, field

from medseg.config.schema import DataConfig, PreprocessingConfig


@dataclass(frozen=True)
class DataSettings:
    """``data``: the dataset section (where, which layout, split, cache, synthetic fallback); the images' dimensions
    and channels; ``preprocessing``: what the cache key and the measured (``auto``) spacing depend on; ``seed`` and
    ``folds``: the split and the cross-validation folds; ``epochs``: the training's, which the synthetic demo may
    cap."""

    data: DataConfig = field(default_factory=DataConfig)
    spatial_dims: int = 2
    in_channels: int = 3
    preprocessing: PreprocessingConfig = field(default_factory=PreprocessingConfig)
    seed: int = 42
    folds: int | None = None
    epochs: int = 40
