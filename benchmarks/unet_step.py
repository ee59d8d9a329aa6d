"""What a 2D training step of the skin-lesion UNet costs, per input size and per network or layout change.

    python benchmarks/unet_step.py [--rounds 4] [--compile]

One AdamW step (forward, DiceCE, backward, update) on a random batch of 8, for the dermoscopy preset's UNet (16-256,
two residual units, PReLU, BatchNorm) at 256, 192 and 160 pixels, and at 256 with one change each: ReLU, one or no
residual unit, half the channels (what skin_lesion.yaml ships), channels-last, channels-last + ReLU (and
``torch.compile`` with ``--compile``).
Candidates run interleaved, one warm-up then ``--rounds`` rounds; prints the median ms per step and the speed-up
against the 16-256 network at 256 measured in the same run. The data loader is not in it (see train_throughput.py).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from medseg.models.registry import build_loss, build_network

PRESET = {"channels": [16, 32, 64, 128, 256], "strides": [2, 2, 2, 2], "num_res_units": 2}
VARIANTS: dict[str, tuple[dict, int, str]] = {  # name: (UNet arguments, input size, how it runs)
    "16-256, 256 px": (PRESET, 256, "plain"),
    "16-256, 192 px": (PRESET, 192, "plain"),
    "16-256, 160 px": (PRESET, 160, "plain"),
    "ReLU for PReLU, 256 px": ({**PRESET, "act": "relu"}, 256, "plain"),
    "1 residual unit, 256 px": ({**PRESET, "num_res_units": 1}, 256, "plain"),
    "no residual units, 256 px": ({**PRESET, "num_res_units": 0}, 256, "plain"),
    "channels 8-128 (shipped since 2026-12-02), 256 px": ({**PRESET, "channels": [8, 16, 32, 64, 128]}, 256, "plain"),
    "channels-last, 256 px": (PRESET, 256, "channels_last"),
    "channels-last + ReLU, 256 px": ({**PRESET, "act": "relu"}, 256, "channels_last"),
}


def make_step(args: dict, size: int, how: str):
    """A closure running one training step of this variant on its own fixed batch."""
    torch.manual_seed(0)
    network = build_network("unet", 2, 3, 1, dict(args)).train()
    image, label = torch.rand(8, 3, size, size), (torch.rand(8, 1, size, size) > 0.5).float()
    if how == "channels_last":
        network = network.to(memory_format=torch.channels_last)
        image = image.contiguous(memory_format=torch.channels_last)
    model = torch.compile(network) if how == "compile" else network
    loss_function, optimizer = build_loss("dice_ce", 1), torch.optim.AdamW(network.parameters(), 1e-3)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_function(model(image), label).backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--compile", action="store_true", help="add torch.compile at 256 px (slow first step)")
    options = parser.parse_args()
    variants = dict(VARIANTS)
    if options.compile:
        variants["torch.compile, 256 px"] = (PRESET, 256, "compile")
    steps = {name: make_step(*variant) for name, variant in variants.items()}
    for step in steps.values():
        step()  # warm-up: allocator, oneDNN primitives, compilation
    seconds: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(options.rounds):  # interleaved, so that drifts in machine load hit every variant
        for name, step in steps.items():
            started = time.perf_counter()
            step()
            seconds[name].append(time.perf_counter() - started)
    reference = statistics.median(seconds["16-256, 256 px"])
    print(f"{torch.get_num_threads()} threads, batch 8, median of {options.rounds} interleaved steps")
    print("| variant | ms/step | speed-up |\n| --- | --- | --- |")
    for name, values in seconds.items():
        median = statistics.median(values)
        print(f"| {name} | {median * 1000:.0f} | {reference / median:.2f}x |")


if __name__ == "__main__":
    main()
