"""GPU evidence in one run: medseg's training step and sliding window on CUDA against a plain MONAI tutorial loop on
the same GPU, and a 512x512x600 CT that must not run out of memory. Skips (exit 0, with the reason) without CUDA.

    python benchmarks/gpu.py [--steps 20] [--repeats 3]

Needs only PyTorch with CUDA plus monai, nibabel, pydantic and PyYAML (no MLflow, SimpleITK or ONNX): see
../shared/gpu/README.md. Prints medians and ratios measured in this run; targets: training >= 1.5x the plain loop
at the same network and patch, sliding window >= 2x, no out-of-memory on 512x512x600.

- training: the brain pipeline's 3D UNet at 96^3 patches (batch 2, 2 channels) and the PH2 pipeline's 2D UNet at
  256^2 (batch 8, RGB), on synthetic tensors. medseg: pinned host batches copied non-blocking, cudnn.benchmark,
  bf16 autocast (fp16 + GradScaler where bf16 is missing), loss in fp32. Plain: fp32, default DataLoader.
- sliding window: a 240x240x155 two-channel volume and a 512x512x300 CT. medseg: windows under autocast, stitched
  on the GPU when the output fits (medseg.infer.inferers.stitch_device); plain: monai sliding_window_inference fp32.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def timed(fn, repeats: int) -> float:
    import torch

    values = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        started = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        values.append(time.perf_counter() - started)
    return statistics.median(values)


def network_for(pipeline: str):
    from medseg.config.loading import load_config
    from medseg.models.registry import build_network

    cfg = load_config(REPO / "pipelines" / pipeline, ["tracking.enabled=false"])
    m = cfg.model
    return cfg, lambda: build_network(m.name, cfg.spatial_dims, m.in_channels, m.out_channels, dict(m.args))


def training_rates(pipeline: str, shape: tuple[int, ...], batch: int, steps: int, repeats: int) -> tuple[float, float]:
    """(medseg samples/s, plain samples/s) for ``steps`` steps."""
    import torch
    from monai.losses import DiceCELoss
    from torch.utils.data import DataLoader, TensorDataset

    from medseg.models.registry import build_loss
    from medseg.runtime.devices import precision_for

    cfg, make = network_for(pipeline)
    device = torch.device("cuda")
    images = torch.randn(batch * 4, cfg.model.in_channels, *shape)
    labels = (torch.rand(batch * 4, 1, *shape) > 0.7).float()

    from medseg.runtime.steps import training_step

    def run(loader, network, loss_function, optimizer, precision, scaler) -> None:
        done = 0
        while done < steps:
            for image, label in loader:
                batch = {"image": image, "label": label}
                training_step(network, batch, loss_function, optimizer, precision, scaler, device)
                done += 1
                if done == steps:
                    return

    torch.backends.cudnn.benchmark = False
    plain_net = make().to(device)
    plain = (
        DataLoader(TensorDataset(images, labels), batch_size=batch, shuffle=True),
        plain_net,
        DiceCELoss(sigmoid=True),
        torch.optim.AdamW(plain_net.parameters(), 1e-3),
        precision_for(device, False),
        None,
    )
    run(*plain)  # warm-up
    plain_s = timed(lambda: run(*plain), repeats)

    torch.backends.cudnn.benchmark = True
    ours_net = make().to(device)
    precision = precision_for(device, "auto")
    ours = (
        DataLoader(TensorDataset(images, labels), batch_size=batch, shuffle=True, pin_memory=True),
        ours_net,
        build_loss("dice_ce", 1),
        torch.optim.AdamW(ours_net.parameters(), 1e-3),
        precision,
        torch.amp.GradScaler("cuda") if precision.needs_scaler else None,
    )
    run(*ours)
    ours_s = timed(lambda: run(*ours), repeats)
    return steps * batch / ours_s, steps * batch / plain_s


def window_rates(shape: tuple[int, ...], channels: int, repeats: int) -> tuple[float, float, float]:
    """(medseg voxels/s, plain voxels/s, medseg peak GiB) for one volume."""
    import torch
    from monai.inferers import sliding_window_inference

    from medseg.infer.inferers import build_inferer, mirrored_probabilities, stitch_device
    from medseg.runtime.devices import precision_for

    cfg, make = network_for("brain_tumor_mri.yaml")
    cfg = cfg.with_values({"model.in_channels": channels, "inference.sw_batch_size": 4})
    device = torch.device("cuda")
    network = make().to(device).eval() if channels == 2 else None
    if network is None:
        from medseg.models.registry import build_network

        m = cfg.model
        network = build_network(m.name, 3, channels, m.out_channels, dict(m.args)).to(device).eval()
    volume = torch.randn(1, channels, *shape)
    voxels = float(torch.tensor(shape).prod())
    roi = cfg.preprocessing.patch_size

    def plain() -> None:
        with torch.inference_mode():
            sliding_window_inference(volume.to(device), roi, 4, network, overlap=0.5, mode="gaussian")

    def ours() -> None:
        batch = volume.to(device, non_blocking=True)
        inferer = build_inferer(cfg, device, stitch_device(cfg, tuple(batch.shape), device))
        with torch.inference_mode(), precision_for(device, "auto").autocast():
            mirrored_probabilities(network, batch, False, inferer).cpu()

    plain()
    plain_s = timed(plain, repeats)
    torch.cuda.reset_peak_memory_stats()
    ours()
    ours_s = timed(ours, repeats)
    peak = torch.cuda.max_memory_allocated() / 2**30
    return voxels / ours_s, voxels / plain_s, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("skipped: no CUDA GPU here (torch.cuda.is_available() is False)")
        return
    name = torch.cuda.get_device_name()
    print(f"{name}, torch {torch.__version__}, bf16 {torch.cuda.is_bf16_supported()}")
    for label, pipeline, shape, batch in (
        ("3D UNet 96^3", "brain_tumor_mri.yaml", (96, 96, 96), 2),
        ("2D UNet 256^2", "skin_lesion.yaml", (256, 256), 8),
    ):
        ours, plain = training_rates(pipeline, shape, batch, args.steps, args.repeats)
        print(f"train {label}: medseg {ours:.1f} samples/s, plain MONAI loop {plain:.1f}: {ours / plain:.2f}x")
    for label, shape, channels in (("240x240x155 x2", (240, 240, 155), 2), ("512x512x300 CT", (512, 512, 300), 1)):
        ours, plain, peak = window_rates(shape, channels, args.repeats)
        print(
            f"sliding window {label}: medseg {ours / 1e6:.1f} Mvox/s, plain {plain / 1e6:.1f}: {ours / plain:.2f}x; "
            f"medseg peak {peak:.2f} GiB"
        )
    try:
        ours, _, peak = window_rates((512, 512, 600), 1, 1)
        print(f"512x512x600 CT: no out-of-memory ({ours / 1e6:.1f} Mvox/s, peak {peak:.2f} GiB)")
    except torch.cuda.OutOfMemoryError as exc:
        print(f"512x512x600 CT: OUT OF MEMORY ({exc})")


if __name__ == "__main__":
    main()
