"""3D sliding-window inference: medseg's predictor versus a plain MONAI ``sliding_window_inference`` call.

    MEDSEG_DATA_ROOT=../shared/data python benchmarks/sliding_window_3d.py [--model RUN_OR_CKPT] [--repeats 3]

Same trained network (the newest ``brain_tumor_mri`` run by default), same ROI (96^3) and overlap (0.5), on
a 240x240x155 two-channel BraTS volume (FLAIR + T1c of the held-out case, or a synthetic one without data).
Both go from the files to a mask on the scan's own grid:

- baseline: ``LoadImaged`` -> RAS -> z-score over non-zero voxels (as in training) ->
  ``sliding_window_inference`` with its defaults (sw_batch_size 1, constant blending) in fp32 under
  ``torch.no_grad`` over the whole volume -> sigmoid -> ``Invertd``;
- medseg: ``Predictor.probabilities`` with the pipeline's settings (brain crop, Gaussian blending,
  ``inference_mode``, resampling back slab by slab) on each backend (``inference.backend: auto`` picks one by
  timing), plus a variant per lever of issue #6.

Prints voxels per second of the input volume (median over repeats, interleaved), the ratio against the
baseline, the Dice between each variant's mask and the baseline's, and each mask's Dice against the ground
truth (raw masks, before post-processing).
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from common import benchmark_network

from medseg.config.loading import load_config
from medseg.config.schema import PipelineConfig
from medseg.config.settings import inference_settings
from medseg.evaluation.metrics import dice_score as dice
from medseg.infer.predictor import Predictor

PIPELINE = Path("pipelines/brain_tumor_mri.yaml")
CASE = "brats_2013_pat0006_1"


def synthetic_case(folder: Path) -> list[str]:
    """Two 240x240x155 channels: a brain-like ellipsoid with a bright lesion, zero outside (as BraTS)."""
    rng = np.random.default_rng(0)
    x, y, z = np.ogrid[:240, :240, :155]
    brain = ((x - 120) / 70) ** 2 + ((y - 120) / 85) ** 2 + ((z - 77) / 65) ** 2 < 1
    lesion = ((x - 95) / 20) ** 2 + ((y - 130) / 25) ** 2 + ((z - 80) / 18) ** 2 < 1
    paths = []
    for channel in range(2):
        volume = np.where(brain, rng.normal(400 + 100 * channel, 40, brain.shape), 0).astype(np.float32)
        volume[lesion] += 300
        paths.append(str(folder / f"synthetic_{channel}.nii.gz"))
        nib.save(nib.Nifti1Image(volume, np.diag([-1.0, -1.0, 1.0, 1.0])), paths[-1])
    return paths


def baseline(network: torch.nn.Module, roi: tuple[int, ...], overlap: float) -> Callable[[list[str]], np.ndarray]:
    """The plain MONAI script: load, orient, normalise, sliding window with defaults, invert."""
    from monai.inferers import sliding_window_inference
    from monai.transforms import (
        Compose,
        EnsureChannelFirstd,
        Invertd,
        LoadImaged,
        NormalizeIntensityd,
        Orientationd,
    )

    preprocess = Compose(
        [
            LoadImaged("image", image_only=False),
            EnsureChannelFirstd("image"),
            Orientationd("image", "RAS"),
            NormalizeIntensityd("image", nonzero=True, channel_wise=True),
        ]
    )
    invert = Invertd("pred", preprocess, orig_keys="image", nearest_interp=False)

    def run(paths: list[str]) -> np.ndarray:
        data = preprocess({"image": paths})
        with torch.no_grad():
            logits = sliding_window_inference(data["image"][None], roi, 1, network, overlap=overlap)
        data["pred"] = torch.sigmoid(logits[0])
        return np.asarray(invert(data)["pred"][0]) > 0.5

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="run folder or checkpoint (default: newest run)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    scratch = tempfile.TemporaryDirectory()

    cfg: PipelineConfig = load_config(PIPELINE, ["tracking.enabled=false"])
    network = benchmark_network(cfg, args.model, "mlruns/runs/brain_tumor_mri/*/model/best.pt")
    data_root = Path(os.environ.get("MEDSEG_DATA_ROOT", "../shared/data")) / "brats2015-sample"
    if (data_root / "imagesTr" / f"{CASE}.nii.gz").is_file():
        paths = [str(data_root / folder / f"{CASE}.nii.gz") for folder in cfg.data.modalities]
        print(f"volume: {CASE} (FLAIR + T1c), {nib.load(paths[0]).shape}")
    else:
        paths = synthetic_case(Path(scratch.name))
        print("volume: synthetic 240x240x155 x 2 channels (BraTS not found; set MEDSEG_DATA_ROOT)")
    voxels = int(np.prod(nib.load(paths[0]).shape))
    roi, overlap = tuple(cfg.inference.roi_size or cfg.preprocessing.patch_size), cfg.inference.overlap
    print(f"ROI {roi}, overlap {overlap}, {torch.get_num_threads()} threads\n")

    def predictor(config: PipelineConfig) -> Callable[[list[str]], np.ndarray]:
        p = Predictor(copy.deepcopy(network), inference_settings(config), steps=[])
        return lambda files: p.probabilities(files)[0] > config.evaluation.threshold

    def with_inference(config: PipelineConfig = cfg, **changes) -> PipelineConfig:
        return config.model_copy(update={"inference": config.inference.model_copy(update=changes)})

    torch_cfg = with_inference(backend="torch")
    onnx_cfg = with_inference(backend="onnxruntime")
    no_crop = onnx_cfg.model_copy(
        update={"preprocessing": cfg.preprocessing.model_copy(update={"crop_foreground": False})}
    )
    sw = cfg.inference.sw_batch_size
    auto = Predictor(
        network, inference_settings(with_inference(bf16=True)), steps=[]
    )  # backend auto, bf16 candidates allowed
    picked = auto.backend.label
    variants: dict[str, Callable[[list[str]], np.ndarray]] = {
        "baseline: plain sliding_window_inference (sw_batch 1, constant, no_grad, PyTorch)": baseline(
            network, roi, overlap
        ),
        f"medseg, backend auto with inference.bf16 (picked: {picked})": predictor(
            with_inference(backend=auto.backend.name, memory_format=auto.backend.memory_format, bf16=auto.backend.bf16)
        ),
        f"medseg (brain crop, Gaussian, sw_batch {sw}), ONNX Runtime": predictor(onnx_cfg),
        f"medseg, PyTorch backend (sw_batch {sw})": predictor(torch_cfg),
        "medseg, PyTorch backend, channels-last 3D": predictor(
            with_inference(torch_cfg, memory_format="channels_last")
        ),
        "medseg, PyTorch backend, bf16 (native only)": predictor(with_inference(torch_cfg, bf16=True)),
        "medseg, PyTorch backend, channels-last 3D + bf16": predictor(
            with_inference(torch_cfg, memory_format="channels_last", bf16=True)
        ),
        "medseg, ONNX Runtime, no brain crop": predictor(with_inference(no_crop)),
        "medseg, ONNX Runtime, sw_batch 4": predictor(with_inference(onnx_cfg, sw_batch_size=4)),
        "medseg, constant blending (as the baseline)": predictor(with_inference(onnx_cfg, blend_mode="constant")),
        "medseg, constant blending, no brain crop (the baseline's windows)": predictor(
            with_inference(no_crop, blend_mode="constant")
        ),
    }

    masks, seconds = {}, {name: [] for name in variants}
    for name, run in variants.items():  # warm-up, and the masks compared
        masks[name] = run(paths)
    for _ in range(args.repeats):
        for name, run in variants.items():
            started = time.perf_counter()
            run(paths)
            seconds[name].append(time.perf_counter() - started)
    reference_name = next(iter(variants))
    reference_time = statistics.median(seconds[reference_name])
    print(f"median of {args.repeats}, whole volume from files to mask")
    label = Path(paths[0]).parent.parent / "labelsTr" / Path(paths[0]).name
    truth = nib.load(label).get_fdata() > 0 if label.is_file() else None
    print("| variant | s/volume | Mvoxel/s | speed ratio | Dice vs baseline mask | Dice vs ground truth |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, values in seconds.items():
        median = statistics.median(values)
        agreement = dice(masks[name], masks[reference_name])
        accuracy = f"{dice(masks[name], truth):.4f}" if truth is not None else "n/a"
        print(
            f"| {name} | {median:.1f} | {voxels / median / 1e6:.2f} | {reference_time / median:.2f}x | "
            f"{agreement:.4f} | {accuracy} |"
        )
    print(f"\nbaseline mask: {int(masks[reference_name].sum())} foreground voxels")


if __name__ == "__main__":
    main()
