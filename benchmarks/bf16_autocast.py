"""Training-step speed with and without bf16 autocast, same network and batch, measured in one run.

    python benchmarks/bf16_autocast.py [--size 256] [--batch 8] [--repeats 5]

Prints the median seconds per step of each and the bf16/fp32 speed ratio (>1 means bf16 is faster),
plus whether this CPU has native bf16 (what ``training.bf16: auto`` decides on).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from medseg.models.registry import build_loss, build_network
from medseg.training.trainer import use_bf16


def step_seconds(bf16: bool, size: int, batch: int, repeats: int) -> float:
    torch.manual_seed(0)
    network = build_network("unet", 2, 3, 1, {"channels": [16, 32, 64, 128, 256], "num_res_units": 2})
    loss_function = build_loss("dice_ce", 1)
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-3)
    images = torch.rand(batch, 3, size, size)
    labels = (torch.rand(batch, 1, size, size) > 0.5).float()
    times = []
    for _ in range(repeats + 1):  # the first step warms up allocators and kernels
        started = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = network(images)
        loss = loss_function(logits.float(), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - started)
    return statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(
        f"CPU capability {torch.backends.cpu.get_cpu_capability()}, native bf16: {use_bf16('auto')}, "
        f"threads {torch.get_num_threads()}"
    )
    fp32 = step_seconds(False, args.size, args.batch, args.repeats)
    bf16 = step_seconds(True, args.size, args.batch, args.repeats)
    print(
        f"UNet {args.batch}x3x{args.size}x{args.size} train step, median of {args.repeats}: "
        f"fp32 {fp32:.3f} s, bf16 autocast {bf16:.3f} s -> bf16 speed ratio {fp32 / bf16:.2f}x"
    )


if __name__ == "__main__":
    main()
