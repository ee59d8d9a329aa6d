"""A predictor built once from a trained model and reused for many images or scans.

input -> the validation preprocessing -> network (whole image in 2D, Gaussian-blended sliding window in
3D; optional mirror TTA) -> sigmoid/softmax -> ``Invertd`` back to the input's own grid -> threshold or
argmax -> the post-processing chosen at training time.
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


def activate(logits: torch.Tensor) -> torch.Tensor:
    """Sigmoid for a 1-channel (binary) output, softmax over classes otherwise."""
    return torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, dim=1)


def build_inferer(cfg: PipelineConfig):
    """Whole-image inference in 2D; sliding window with Gaussian blending in 3D."""
    from monai.inferers import SimpleInferer, SlidingWindowInferer

    if cfg.spatial_dims == 2:
        return SimpleInferer()
    inf = cfg.inference
    return SlidingWindowInferer(
        roi_size=inf.roi_size or cfg.preprocessing.patch_size,
        sw_batch_size=inf.sw_batch_size,
        overlap=inf.overlap,
        mode=inf.blend_mode,
    )


def mirrored_probabilities(network: nn.Module, batch: torch.Tensor, tta: bool, inferer=None) -> torch.Tensor:
    """Class probabilities, averaged over flips of every spatial axis when ``tta`` is on."""
    spatial_axes = list(range(2, batch.ndim))
    flips: list[list[int]] = [[]]
    if tta:
        flips += [[axis] for axis in spatial_axes] + ([spatial_axes] if len(spatial_axes) > 1 else [])
    total: torch.Tensor | None = None
    for axes in flips:
        flipped = batch.flip(axes) if axes else batch
        logits = (inferer(flipped, network) if inferer is not None else network(flipped)).float()
        probs = activate(logits.flip(axes) if axes else logits)
        total = probs if total is None else total.add_(probs)
    return total / len(flips)


@dataclass
class Predictor:
    """Segments 2D images or 3D volumes with a trained network, in the input's own geometry.

    2D results are (H, W) arrays; 3D results are (X, Y, Z) arrays on the scan's voxel grid, as loaded.
    """

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
        self.inferer = build_inferer(self.config)
        self.invert = Invertd(keys="pred", transform=self.preprocess, orig_keys="image", nearest_interp=False)

    @classmethod
    def from_model(cls, model: Path | str, tta: bool | None = None, steps: list[str] | None = None) -> Predictor:
        """Build from a run folder, its ``model/`` folder, a checkpoint file or an MLflow model URI.

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
        return cls(network, config, steps, config.inference.tta if tta is None else tta)

    def probabilities(self, image: Path | str | list) -> np.ndarray:
        """Class probabilities (C, *spatial) on the input's own grid (2D: (C, H, W))."""
        from monai.data import MetaTensor

        source = [str(p) for p in image] if isinstance(image, (list, tuple)) else str(image)
        name = source[0] if isinstance(source, list) else source
        try:
            data = self.preprocess({"image": source})
        except MedsegError:
            raise
        except Exception as exc:  # MONAI wraps reader errors in RuntimeError chains
            reason = _root_cause(exc).replace(f" for file: {name}", "").replace(name, "").rstrip(". ")
            raise MedsegError(f"{name}: cannot read image ({reason})") from None
        batch = data["image"].as_tensor()[None]
        # keep only the metadata of the preprocessed image: Invertd needs its history, not its voxels
        data["image"] = MetaTensor(
            torch.empty(0), meta=data["image"].meta, applied_operations=data["image"].applied_operations
        )
        with torch.inference_mode():
            probs = mirrored_probabilities(self.network, batch, self.tta, self.inferer)
        del batch
        data["pred"] = MetaTensor(probs[0])  # a MetaTensor, or Invertd silently leaves it untouched
        inverted = np.asarray(self.invert(data)["pred"], dtype=np.float32)
        if self.config.spatial_dims == 2:
            return inverted.transpose(0, 2, 1)  # the PIL reader is (W, H); images are (H, W)
        return inverted

    def probability(self, image_path: Path) -> np.ndarray:
        """Foreground probability of a binary model, shape of the input."""
        return self.probabilities(image_path)[0]

    def discretise(self, probs: np.ndarray) -> np.ndarray:
        """Probabilities -> uint8 label map (threshold for binary, argmax for multi-class)."""
        if probs.shape[0] == 1:
            return (probs[0] > self.threshold).astype(np.uint8)
        return probs.argmax(axis=0).astype(np.uint8)

    def segment(self, image: Path | str | list) -> tuple[np.ndarray, np.ndarray]:
        """Label maps before and after post-processing (uint8, the input's shape)."""
        raw = self.discretise(self.probabilities(image))
        return raw, apply_steps(raw, self.steps, self.config.postprocessing)


def _root_cause(exc: BaseException) -> str:
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return f"{exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": ")
