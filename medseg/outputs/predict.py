"""``medseg predict``: every image or scan of an input folder through a trained model, on the local engine (this
process) or on Ray Data actors, optionally one shard of N."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from medseg.core.errors import ConfigError
from medseg.infer.predictor import Predictor
from medseg.infer.sources import SourceOptions
from medseg.outputs.batch import Outputs, PredictionReport, folder_cases, predict_folder

BACKENDS = ("auto", "torch", "onnxruntime", "openvino")
ENGINES = ("local", "ray")


@dataclass(frozen=True)
class Engine:
    """Where the cases run: ``local`` (this process), or ``ray`` with ``workers`` actors (``gpus_per_worker`` each),
    on a local Ray or the cluster at ``address``."""

    name: str = "local"
    workers: int = 2
    gpus_per_worker: float = 0.0
    address: str | None = None

    def __post_init__(self) -> None:
        if self.name not in ENGINES:
            raise ConfigError(f"--engine {self.name}: expected {' or '.join(ENGINES)}")
        if self.name == "ray":
            from medseg.outputs.ray_engine import import_ray

            import_ray()  # the extra is installed, or one line saying how


def predict_batch(
    model: str,
    source: Path,
    out_dir: Path,
    outputs: Outputs,
    options: SourceOptions,
    engine: Engine = Engine(),
    shard: tuple[int, int] | None = None,
    overwrite: bool = False,
) -> PredictionReport:
    """Load ``model`` once (a bad model fails here, before any engine starts) and segment ``source`` into
    ``out_dir``; resumable unless ``overwrite``; ``shard`` (i, N): only shard i of N."""
    if options.backend not in (None, *BACKENDS):
        raise ConfigError(f"--backend {options.backend}: expected {', '.join(BACKENDS)}")
    predictor = Predictor.from_model(model, options.tta, options.steps, options.backend, options.folds, options.device)
    if engine.name == "local":
        return predict_folder(predictor, source, out_dir, outputs, overwrite=overwrite, shard=shard)
    from medseg.outputs.ray_engine import predict_with_ray

    _, todo, summary = folder_cases(predictor.settings, source, out_dir, shard)
    keywords = {"tta": options.tta, "backend": options.backend, "folds": options.folds, "device": options.device}
    return predict_with_ray(
        predictor,
        model,
        keywords,
        todo,
        out_dir,
        outputs,
        overwrite,
        engine.workers,
        engine.gpus_per_worker,
        engine.address,
        summary,
    )
