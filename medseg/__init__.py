"""medseg: medical-image segmentation pipelines.

The public Python API, for notebooks and scripts (imported on first use, so ``import medseg`` stays fast)::

    import medseg

    cfg = medseg.load_config("pipelines/skin_lesion.yaml", ["training.epochs=5"])
    result = medseg.run_pipeline(cfg)
    predictor = medseg.Predictor.from_model(result.run_dir)
    segmentation = predictor.predict("image.png")  # .labels, .header (3D geometry), .probabilities
    source = medseg.DicomwebSource("https://pacs/dicom-web", study="1.2.3", store=True)
    report = medseg.predict_dicomweb(predictor, source, out_dir)  # a PACS's series in, DICOM-SEG back

Everything else is internal and may change.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from medseg.version import __version__ as __version__

__all__ = ["DicomwebSource", "Predictor", "Segmentation", "load_config", "predict_dicomweb", "run_pipeline"]

_PUBLIC = {
    "load_config": "medseg.config.loading",
    "run_pipeline": "medseg.pipeline.run",
    "Predictor": "medseg.infer.predictor",
    "Segmentation": "medseg.infer.predictor",
    "predict_dicomweb": "medseg.outputs.dicomweb",
    "DicomwebSource": "medseg.outputs.pacs",
}

if TYPE_CHECKING:
    from medseg.config.loading import load_config
    from medseg.infer.predictor import Predictor, Segmentation
    from medseg.outputs.dicomweb import predict_dicomweb
    from medseg.outputs.pacs import DicomwebSource
    from medseg.pipeline.run import run_pipeline


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'medseg' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
