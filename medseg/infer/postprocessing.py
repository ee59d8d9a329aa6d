"""Mask clean-up (scikit-image, scipy.ndimage) per foreground label, and its selection on validation data.

In ``auto`` mode a step is kept only if it raises the mean validation Dice (nnU-Net's rule). This module
decides, saves the choice beside the model (``model/postprocessing.json``) and reads it back; predictors are
built with the steps it returns. The first step, ``dense_crf`` (:mod:`medseg.infer.crf`), refines the probabilities
with the image before they are discretised; the others clean up the label map.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage
from skimage import morphology

from medseg.config.schema import PostprocessingConfig
from medseg.core.atomic import atomic_write_text
from medseg.core.layout import ModelLayout
from medseg.infer.crf import crf_parameters
from medseg.labels import LabelScheme

log = logging.getLogger(__name__)

DENSE_CRF = "dense_crf"  # on probabilities and the image (the predictor runs it); the other steps on masks
STEP_ORDER = (DENSE_CRF, "fill_holes", "largest_component", "remove_small_objects", "opening", "closing")
MIN_GAIN = 1e-4


def _components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Connected components (full connectivity; int32 labels, a quarter of skimage's int64) and their sizes."""
    labelled, _ = ndimage.label(mask, structure=ndimage.generate_binary_structure(mask.ndim, mask.ndim))
    sizes = np.bincount(labelled.ravel())
    sizes[0] = 0
    return labelled, sizes


def _largest_component(mask: np.ndarray, cfg: PostprocessingConfig) -> np.ndarray:
    labelled, sizes = _components(mask)
    return mask if len(sizes) <= 2 else labelled == sizes.argmax()


def _fill_holes(mask: np.ndarray, cfg: PostprocessingConfig) -> np.ndarray:
    return ndimage.binary_fill_holes(mask)


def _remove_small_objects(mask: np.ndarray, cfg: PostprocessingConfig) -> np.ndarray:
    labelled, sizes = _components(mask)
    return (sizes >= cfg.min_size)[labelled]


def _footprint(ndim: int, radius: int) -> np.ndarray:
    return morphology.disk(radius) if ndim == 2 else morphology.ball(radius)


def _opening(mask: np.ndarray, cfg: PostprocessingConfig) -> np.ndarray:
    # skimage's binary_* morphology is deprecated since 0.26; opening/closing give the same masks
    return morphology.opening(mask, _footprint(mask.ndim, cfg.radius)).astype(bool, copy=False)


def _closing(mask: np.ndarray, cfg: PostprocessingConfig) -> np.ndarray:
    return morphology.closing(mask, _footprint(mask.ndim, cfg.radius)).astype(bool, copy=False)


STEPS: dict[str, Callable[[np.ndarray, PostprocessingConfig], np.ndarray]] = {
    "fill_holes": _fill_holes,
    "largest_component": _largest_component,
    "remove_small_objects": _remove_small_objects,
    "opening": _opening,
    "closing": _closing,
}


def enabled_steps(cfg: PostprocessingConfig) -> list[str]:
    """The steps switched on in the config, in their fixed order."""
    return [name for name in STEP_ORDER if getattr(cfg, name)]


def apply_steps(labels: np.ndarray, steps: Sequence[str], cfg: PostprocessingConfig) -> np.ndarray:
    """Apply the mask steps of ``steps`` to each foreground label of an integer label map (no channel axis); the
    dense CRF, which ran before the label map was made, is not one of them."""
    steps = [name for name in steps if name != DENSE_CRF]
    if not steps:
        return labels
    result = np.zeros_like(labels)
    for value in np.flatnonzero(np.bincount(labels.ravel())):  # present labels, without sorting the volume
        if value == 0:
            continue
        mask = labels == value
        for name in steps:
            mask = STEPS[name](mask, cfg)
        result[mask & (result == 0)] = value
    return result


def select_steps(
    predictions: Sequence[np.ndarray],
    truths: Sequence[np.ndarray],
    cfg: PostprocessingConfig,
    score: Callable[[np.ndarray, np.ndarray], float],
    refined: Sequence[np.ndarray] | None = None,
) -> tuple[list[str], dict[str, float]]:
    """Greedily keep each enabled step that improves the mean ``score`` over the validation cases.

    ``refined``: the same cases' label maps after the dense CRF, tried first when given; the mask steps are then
    tried on those maps if the CRF was kept.

    Returns:
        The chosen steps and the mean score after trying each candidate (``"none"`` = no post-processing).
    """

    def mean_score(maps: Sequence[np.ndarray], steps: list[str]) -> float:
        return float(np.mean([score(apply_steps(p, steps, cfg), t) for p, t in zip(maps, truths, strict=True)]))

    chosen: list[str] = []
    maps = predictions
    best = mean_score(maps, chosen)
    scores = {"none": best}
    if refined is not None:
        scores[DENSE_CRF] = mean_score(refined, [])
        if scores[DENSE_CRF] > best + MIN_GAIN:
            chosen, maps, best = [DENSE_CRF], refined, scores[DENSE_CRF]
    for name in enabled_steps(cfg):
        if name == DENSE_CRF:
            continue
        trial = mean_score(maps, [*chosen, name])
        scores[name] = trial
        if trial > best + MIN_GAIN:
            chosen, best = [*chosen, name], trial
    return chosen, scores


def chooses_on_data(cfg: PostprocessingConfig) -> bool:
    """``auto`` with steps to try: the choice needs validation label maps (``on`` / ``off`` decide without)."""
    return cfg.mode == "auto" and bool(enabled_steps(cfg))


def tries_dense_crf(cfg: PostprocessingConfig) -> bool:
    """``auto`` with the dense CRF a candidate: the choice also needs the validation maps after the CRF."""
    return cfg.mode == "auto" and cfg.dense_crf


def runs_dense_crf(cfg: PostprocessingConfig) -> bool:
    """Whether the dense CRF may run (tried or forced): pydensecrf2 must be installed."""
    return cfg.mode != "off" and cfg.dense_crf


def choose_postprocessing(
    predictions: Sequence[np.ndarray],
    truths: Sequence[np.ndarray],
    cfg: PostprocessingConfig,
    labels: LabelScheme,
    refined: Sequence[np.ndarray] | None = None,
) -> dict[str, Any]:
    """The post-processing to replay, decided on validation label maps (``auto``: mean Dice over the classes or
    regions of ``labels``), or as configured. ``refined``: the maps after the dense CRF (:func:`select_steps`);
    without them an enabled CRF is not chosen (e.g. on out-of-fold maps, which keep no images).

    Returns:
        ``{"mode", "candidates", "steps", "scores"}`` (and ``"crf"``, its parameters, when the CRF is a candidate);
        ``scores`` holds the mean validation Dice per candidate.
    """
    candidates = enabled_steps(cfg)
    choice: dict[str, Any] = {"mode": cfg.mode, "candidates": candidates, "steps": [], "scores": {}}
    if DENSE_CRF in candidates:
        choice["crf"] = crf_parameters(cfg)
    if tries_dense_crf(cfg) and refined is None:
        log.warning("postprocessing.dense_crf: no validation images to try the dense CRF on here; not chosen")
    if chooses_on_data(cfg):
        tried = refined if tries_dense_crf(cfg) else None
        choice["steps"], choice["scores"] = select_steps(predictions, truths, cfg, labels.mean_dice, tried)
        log.info(
            "Post-processing chosen on %d validation cases: %s (validation Dice %s)",
            len(predictions),
            ", ".join(choice["steps"]) or "none",
            ", ".join(f"{k} {v:.4f}" for k, v in choice["scores"].items()),
        )
    elif cfg.mode == "on":
        choice["steps"] = candidates
    return choice


def save_choice(choice: dict[str, Any], model_dir: Path) -> None:
    """Write the choice beside the model's checkpoints."""
    atomic_write_text(ModelLayout(model_dir).postprocessing, json.dumps(choice, indent=1))


def saved_steps(cfg: PostprocessingConfig, model_dir: Path) -> list[str]:
    """The steps to replay: chosen on validation (``auto``), as configured (``on``), or none (``off``)."""
    if cfg.mode == "off":
        return []
    if cfg.mode == "on":
        return enabled_steps(cfg)
    chosen = ModelLayout(model_dir).postprocessing
    if chosen.is_file():
        return list(json.loads(chosen.read_text(encoding="utf-8"))["steps"])
    log.warning("%s: no post-processing choice saved with the model; applying none", chosen)
    return []
