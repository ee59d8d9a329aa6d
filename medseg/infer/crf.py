"""Dense conditional-random-field refinement of a 2D RGB image's class probabilities (Kraehenbuehl & Koltun's fully
connected CRF, through pydensecrf2: the ``crf`` extra, compiled C++).

The unary term is the network's ``-log p``; the pairwise terms are a Gaussian (smoothness) kernel on pixel positions
and a bilateral (appearance) kernel on positions and colours, so a boundary moves towards the image's colour edges;
a few mean-field iterations give the refined probabilities. :mod:`medseg.infer.postprocessing` decides whether it
runs (``postprocessing.dense_crf``, kept on validation like the mask steps).
"""

from __future__ import annotations

from types import ModuleType

import numpy as np

from medseg.config.schema import PostprocessingConfig
from medseg.core.errors import ConfigError

PROBABILITY_FLOOR = 1e-6  # -log of a zero probability is infinite: clipped here first


def require_dense_crf() -> ModuleType:
    """pydensecrf's ``densecrf`` module; ConfigError naming the extra to install when it is missing."""
    try:
        from pydensecrf import densecrf
    except ImportError:
        raise ConfigError(
            "postprocessing.dense_crf: pydensecrf2 is not installed; install the crf extra "
            "(pip install -c constraints.txt -e '.[crf]', which compiles C++) or set postprocessing.dense_crf: false"
        ) from None
    return densecrf


def dense_crf(
    probabilities: np.ndarray, image: np.ndarray, cfg: PostprocessingConfig, independent: bool = False
) -> np.ndarray:
    """The probabilities after the dense CRF, same shape.

    Args:
        probabilities: (C, H, W) on the image's own grid: softmax classes, or one sigmoid channel per structure.
        image: (H, W, 3) RGB, 0..255.
        cfg: ``crf_iterations`` and the kernels' ``crf_*`` parameters.
        independent: each channel is its own sigmoid (regions); a single channel always is. Each such channel is
            refined as the two-label problem [1 - p, p].
    """
    densecrf = require_dense_crf()
    if image.shape != (*probabilities.shape[1:], 3):
        raise ValueError(f"dense CRF: image {image.shape} does not match probabilities {probabilities.shape}")
    rgb = np.ascontiguousarray(np.clip(image, 0, 255).astype(np.uint8))
    if independent or probabilities.shape[0] == 1:
        return np.stack([_mean_field(densecrf, np.stack([1.0 - p, p]), rgb, cfg)[1] for p in probabilities])
    return _mean_field(densecrf, probabilities, rgb, cfg)


def _mean_field(
    densecrf: ModuleType, probabilities: np.ndarray, rgb: np.ndarray, cfg: PostprocessingConfig
) -> np.ndarray:
    classes, height, width = probabilities.shape
    crf = densecrf.DenseCRF2D(width, height, classes)
    unary = -np.log(np.clip(probabilities, PROBABILITY_FLOOR, 1.0)).reshape(classes, -1)
    crf.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
    crf.addPairwiseGaussian(sxy=cfg.crf_gaussian_sxy, compat=cfg.crf_gaussian_compat)
    crf.addPairwiseBilateral(
        sxy=cfg.crf_bilateral_sxy, srgb=cfg.crf_bilateral_srgb, rgbim=rgb, compat=cfg.crf_bilateral_compat
    )
    refined = np.asarray(crf.inference(cfg.crf_iterations), dtype=np.float32)
    return refined.reshape(classes, height, width)


def crf_parameters(cfg: PostprocessingConfig) -> dict[str, float]:
    """The CRF's parameters, as recorded with the choice."""
    return {name: getattr(cfg, name) for name in type(cfg).model_fields if name.startswith("crf_")}
