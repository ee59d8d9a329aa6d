"""2D inference backends: what ``inference.backend: auto`` picks against each candidate, end to end.

    MEDSEG_DATA_ROOT=../shared/data python benchmarks/inference_2d.py [--model RUN_OR_CKPT] [--repeats 5]

Same trained network (the newest ``skin_lesion`` run by default, else an untrained one), the pipeline's own
settings (256x256, mirror TTA), the first 12 PH2 images (or synthetic ones without data), from the files to
probabilities on each image's grid. Variants: PyTorch NCHW fp32 (the baseline), channels-last, bf16 autocast and
both (native bf16 only), ONNX Runtime, and ``auto``. Prints images per second (median over interleaved repeats),
the ratio against the baseline, and each variant's mask Dice against the baseline's masks.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import benchmark_network
from PIL import Image

from medseg.config.loading import load_config
from medseg.config.schema import PipelineConfig
from medseg.config.settings import inference_settings
from medseg.evaluation.metrics import dice_score as dice
from medseg.infer.predictor import Predictor
from medseg.runtime.devices import cpu_has_native_bf16

PIPELINE = Path("pipelines/skin_lesion.yaml")


def images(folder: Path, count: int) -> list[Path]:
    """PH2 images from MEDSEG_DATA_ROOT, else synthetic 384x512 pictures with a dark blob."""
    ph2 = Path(os.environ.get("MEDSEG_DATA_ROOT", "../shared/data")) / "ph2" / "images"
    if ph2.is_dir():
        return sorted(ph2.iterdir())[:count]
    rng = np.random.default_rng(0)
    paths = []
    for index in range(count):
        picture = rng.normal(200, 10, (384, 512, 3))
        yy, xx = np.ogrid[:384, :512]
        picture[(yy - 190) ** 2 + (xx - 250) ** 2 < 90**2] -= 110
        paths.append(folder / f"synthetic_{index}.png")
        Image.fromarray(picture.clip(0, 255).astype(np.uint8)).save(paths[-1])
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="run folder or checkpoint (default: newest run)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    scratch = tempfile.TemporaryDirectory()
    cfg: PipelineConfig = load_config(PIPELINE, ["tracking.enabled=false"])
    network = benchmark_network(cfg, args.model, "mlruns/runs/skin_lesion/*/model/best.pt")
    files = images(Path(scratch.name), 12)
    print(
        f"{len(files)} images from {files[0].parent}, {torch.get_num_threads()} threads, native bf16: "
        f"{cpu_has_native_bf16()}, TTA {cfg.inference.tta}\n"
    )

    def settings(**changes) -> PipelineConfig:
        return cfg.model_copy(update={"inference": cfg.inference.model_copy(update=changes)})

    auto = Predictor(
        copy.deepcopy(network), inference_settings(settings(bf16=True)), steps=[]
    )  # backend auto, bf16 allowed
    chosen = auto.backend
    print(
        "auto timed (ms per 256x256 input): "
        + ", ".join(f"{k} {v * 1000:.1f}" for k, v in auto.backend_timings.items())
    )
    predictors = {
        "baseline: PyTorch NCHW fp32": settings(backend="torch"),
        "PyTorch channels-last": settings(backend="torch", memory_format="channels_last"),
        "PyTorch bf16": settings(backend="torch", bf16=True),
        "PyTorch channels-last + bf16": settings(backend="torch", memory_format="channels_last", bf16=True),
        "ONNX Runtime": settings(backend="onnxruntime"),
        f"auto (picked {chosen.label})": settings(
            backend=chosen.name, memory_format=chosen.memory_format, bf16=chosen.bf16
        ),
    }
    if not cpu_has_native_bf16():  # bf16 stays off here: the same as the fp32 variants
        predictors = {k: v for k, v in predictors.items() if "bf16" not in k or k.startswith("auto")}
    runners = {
        name: Predictor(copy.deepcopy(network), inference_settings(config), steps=[])
        for name, config in predictors.items()
    }
    masks = {name: [p.probabilities(f) > 0.5 for f in files] for name, p in runners.items()}  # warm-up too
    seconds: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(args.repeats):
        for name, runner in runners.items():
            started = time.perf_counter()
            for file in files:
                runner.probabilities(file)
            seconds[name].append(time.perf_counter() - started)
    reference = next(iter(runners))
    base = statistics.median(seconds[reference])
    print(f"median of {args.repeats} passes over {len(files)} images")
    print("| variant | images/s | ratio | mask Dice vs baseline |")
    print("| --- | --- | --- | --- |")
    for name, values in seconds.items():
        median = statistics.median(values)
        agreement = np.mean([dice(a, b) for a, b in zip(masks[name], masks[reference], strict=True)])
        print(f"| {name} | {len(files) / median:.2f} | {base / median:.2f}x | {agreement:.4f} |")


if __name__ == "__main__":
    main()
