"""A 2D predictor built once from a trained model and reused for many images.

image file -> the validation preprocessing -> network (optional mirror TTA) -> sigmoid ->
``Invertd`` back to the image's own size -> threshold -> the post-processing chosen at training time.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from medseg.checkpoint import load_checkpoint, network_from_checkpoint, resolve_checkpoint
from medseg.config import PipelineConfig
from medseg.errors import MedsegError, ModelError
from medseg.postprocessing import apply_steps, enabled_steps

log = logging.getLogger(__name__)

POSTPROCESSING_FILE = "postprocessing.json"
MODEL_URI_SCHEMES = ("runs:/", "models:/", "mlflow-artifacts:/")


def postprocessing_steps(cfg: PipelineConfig, model_dir: Path) -> list[str]:
    """The steps to replay: chosen on validation (``auto``), as configured (``on``), or none (``off``)."""
    mode = cfg.postprocessing.mode
    if mode == "off":
        return []
    if mode == "on":
        return enabled_steps(cfg.postprocessing)
    chosen = model_dir / POSTPROCESSING_FILE
    if chosen.is_file():
        return list(json.loads(chosen.read_text(encoding="utf-8"))["steps"])
    log.warning("%s: no post-processing choice saved with the model; applying none", chosen)
    return []


def mirrored_probabilities(network: nn.Module, batch: torch.Tensor, tta: bool) -> torch.Tensor:
    """Sigmoid probabilities, averaged over flips of every spatial axis when ``tta`` is on."""
    spatial_axes = list(range(2, batch.ndim))
    flips: list[list[int]] = [[]]
    if tta:
        flips += [[axis] for axis in spatial_axes] + ([spatial_axes] if len(spatial_axes) > 1 else [])
    total = torch.zeros((), dtype=torch.float32)
    for axes in flips:
        flipped = batch.flip(axes) if axes else batch
        logits = network(flipped).float()
        total = total + torch.sigmoid(logits.flip(axes) if axes else logits)
    return total / len(flips)


@dataclass
class Predictor:
    """Segments 2D images with a trained network; probabilities come back at the image's own size."""

    network: nn.Module
    config: PipelineConfig
    steps: list[str] = field(default_factory=list)
    tta: bool = False

    def __post_init__(self) -> None:
        from monai.transforms import Invertd

        from medseg.data.transforms import inference_transforms

        self.network.eval()
        self.threshold = self.config.evaluation.threshold
        self.preprocess = inference_transforms(self.config)
        self.invert = Invertd(keys="pred", transform=self.preprocess, orig_keys="image", nearest_interp=False)

    @classmethod
    def from_model(cls, model: Path | str, tta: bool | None = None, steps: list[str] | None = None) -> Predictor:
        """Build from a run folder, its ``model/`` folder or a checkpoint file.

        ``steps`` overrides the post-processing saved with the model (used while choosing it).
        """
        if isinstance(model, str) and model.startswith(MODEL_URI_SCHEMES):
            from medseg.tracking import download_model

            checkpoint = download_model(model)
        else:
            checkpoint = resolve_checkpoint(Path(model))
        state = load_checkpoint(checkpoint)
        try:
            config = PipelineConfig.model_validate(state["config"])
        except (KeyError, ValueError) as exc:
            raise ModelError(f"{checkpoint}: the configuration stored in the checkpoint is invalid ({exc})") from None
        network = network_from_checkpoint(state, checkpoint)
        steps = postprocessing_steps(config, checkpoint.parent) if steps is None else steps
        return cls(network, config, steps, config.prediction.tta if tta is None else tta)

    def probability(self, image_path: Path) -> np.ndarray:
        """Foreground probability, shape (H, W) of the input image."""
        try:
            data = self.preprocess({"image": str(image_path)})
        except Exception as exc:  # MONAI wraps reader errors in RuntimeError chains
            reason = _root_cause(exc).replace(f" for file: {image_path}", "").replace(str(image_path), "").rstrip(". ")
            raise MedsegError(f"{image_path}: cannot read image ({reason})") from None
        from monai.data import MetaTensor

        batch = data["image"].as_tensor()[None]
        with torch.inference_mode():
            probs = mirrored_probabilities(self.network, batch, self.tta)
        data["pred"] = MetaTensor(probs[0])  # a MetaTensor, or Invertd silently leaves it untouched
        inverted = self.invert(data)["pred"]
        return np.asarray(inverted[0]).T.astype(np.float32)  # PIL reader is (W, H); images are (H, W)

    def segment(self, image_path: Path) -> tuple[np.ndarray, np.ndarray]:
        """Thresholded mask before and after post-processing, both (H, W) bool."""
        raw = self.probability(image_path) > self.threshold
        post = apply_steps(raw.astype(np.uint8), self.steps, self.config.postprocessing) > 0
        return raw, post


def _root_cause(exc: BaseException) -> str:
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return f"{exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": ")
