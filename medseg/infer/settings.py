"""What a predictor reads, as one small frozen object: the images it takes, their preprocessing, the inference
options, what its outputs mean and how they are cleaned up (:func:`medseg.config.settings.inference_settings` builds
it from a pipeline configuration; a model's sources build it from the configuration stored with the model)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from medseg.config.schema import InferenceConfig, PostprocessingConfig
from medseg.labels import LabelScheme
from medseg.transforms.settings import TransformSettings


@dataclass(frozen=True)
class InferenceSettings:
    """``transforms``: the deterministic preprocessing (and the images' dimensions and channels); ``inference``:
    device, backend, TTA, sliding window, input limits; ``labels``: what the outputs mean; ``postprocessing``: the
    clean-up steps' parameters; ``gpu_precision``: the mixed precision the model was trained with, used under
    autocast on a GPU; ``modalities``: the input channels' names."""

    transforms: TransformSettings = field(default_factory=TransformSettings)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    labels: LabelScheme = field(default_factory=LabelScheme)
    postprocessing: PostprocessingConfig = field(default_factory=PostprocessingConfig)
    gpu_precision: bool | str = "auto"
    modalities: tuple[str, ...] = ()

    @property
    def spatial_dims(self) -> int:
        return self.transforms.spatial_dims

    @property
    def in_channels(self) -> int:
        return self.transforms.in_channels

    @property
    def out_channels(self) -> int:
        return self.labels.out_channels

    @property
    def working_shape(self) -> tuple[int, ...]:
        """The spatial shape the network sees: the resized image (2D) or the sliding-window ROI (3D)."""
        if self.spatial_dims == 2:
            height, width = self.transforms.preprocessing.spatial_size
            return (width, height)  # as the network sees it: MONAI's PIL reader loads (width, height) arrays
        return tuple(self.inference.roi_size or self.transforms.preprocessing.patch_size)

    def with_inference(self, **changes: object) -> InferenceSettings:
        """The same settings with ``inference.*`` values replaced (``backend="torch"``)."""
        return replace(self, inference=self.inference.model_copy(update=changes))
