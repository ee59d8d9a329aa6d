"""2D training throughput: medseg's training epoch versus the loop a tutorial writes, same network and size.

    MEDSEG_DATA_ROOT=../shared/data python benchmarks/train_throughput.py [--epochs 2] [--repeats 3]
    python benchmarks/train_throughput.py --synthetic-size 2048 1536   # ISIC-sized photographs

Both train the skin-lesion UNet (pipelines/skin_lesion.yaml) at 256x256, batch 8, on the PH2 training split
(or on synthetic JPEGs when PH2 is absent):

- tutorial: a ``torch.utils.data.Dataset`` that opens, decodes and resizes every image and mask with PIL
  each time it is read, random flips, ``DataLoader(batch_size=8, shuffle=True)`` with its defaults,
  fp32, NCHW, ``DiceCELoss`` + AdamW;
- medseg: ``medseg.training.loaders``' loaders (decoded and resized once into a ``CacheDataset``, MONAI random
  affine, flips, colour and noise augmentation per epoch) and its ``training_step``;
- medseg variants: each lever of issue #6 that applies on a CPU (channels-last, ``torch.compile``, a loader
  worker), bf16 autocast, channels-last + bf16, and what ``training.memory_format: auto`` picks here by timing, so
  that only levers that measure are kept.

Prints samples per second (median over repeats of whole epochs, data loading included) and the ratio
against the tutorial measured in the same run. The one-off cache build is reported separately.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from medseg.config.loading import load_config
from medseg.config.schema import PipelineConfig
from medseg.config.settings import data_settings, training_settings
from medseg.data.dataset import prepare_data
from medseg.models.registry import build_loss, build_network
from medseg.runtime.devices import cpu_has_native_bf16
from medseg.runtime.steps import training_step
from medseg.training.loaders import build_loaders
from medseg.training.schedules import build_optimizer

PIPELINE = Path("pipelines/skin_lesion.yaml")


class TutorialDataset(torch.utils.data.Dataset):
    """What a tutorial writes: decode and resize on every read, flips as augmentation."""

    def __init__(self, records: list[dict], size: int) -> None:
        self.records, self.size = records, size

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        record = self.records[index]
        image = Image.open(record["image"]).convert("RGB").resize((self.size, self.size), Image.BILINEAR)
        mask = Image.open(record["label"]).convert("L").resize((self.size, self.size), Image.NEAREST)
        image_t = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
        mask_t = torch.from_numpy((np.asarray(mask) > 127).astype(np.float32))[None]
        for axis in (1, 2):
            if torch.rand(()) < 0.5:
                image_t, mask_t = image_t.flip(axis), mask_t.flip(axis)
        return {"image": image_t.contiguous(), "label": mask_t.contiguous()}


def epoch_rate(loader: Iterable, step: Callable[[dict], float], samples: int, epochs: int) -> float:
    """Samples per second over ``epochs`` whole epochs (loading + forward + backward + update)."""
    started = time.perf_counter()
    for _ in range(epochs):
        for batch in loader:
            step(batch)
    return samples * epochs / (time.perf_counter() - started)


def make_step(
    cfg: PipelineConfig, channels_last: bool = False, compiled: bool = False, bf16: bool = False
) -> Callable[[dict], float]:
    torch.manual_seed(0)
    m = cfg.model
    network = build_network(m.name, 2, m.in_channels, m.out_channels, m.args).train()
    if channels_last:
        network = network.to(memory_format=torch.channels_last)
    model = torch.compile(network) if compiled else network
    loss_function = build_loss(cfg.loss.name, m.out_channels, cfg.loss.args)
    optimizer = build_optimizer(training_settings(cfg), network)

    def step(batch: dict) -> float:
        if channels_last:
            batch = {**batch, "image": batch["image"].contiguous(memory_format=torch.channels_last)}
        return training_step(model, batch, loss_function, optimizer, bf16)

    return step


def auto_step(cfg: PipelineConfig, loader: Iterable) -> tuple[Callable[[dict], float], str]:
    """What ``training.memory_format: auto`` picks on this machine (timed on a real batch), as a step."""
    from medseg.runtime.devices import precision_for
    from medseg.runtime.steps import fastest_step

    m = cfg.model
    network = build_network(m.name, 2, m.in_channels, m.out_channels, m.args).train()
    cpu = torch.device("cpu")
    candidates = [(layout, precision_for(cpu, p)) for layout in (False, True) for p in (False, cfg.training.bf16)]
    candidates = list(dict.fromkeys((layout, precision) for layout, precision in candidates))
    batch = next(iter(loader))
    (channels_last, precision), _ = fastest_step(network, batch, build_loss("dice_ce", 1), candidates, cpu)
    choice = f"{'channels-last' if channels_last else 'NCHW'}, {precision.name}"
    return make_step(cfg, channels_last=channels_last, bf16=precision.enabled), choice


def augmentation_costs(dataset: Any, repeats: int) -> None:
    """Milliseconds per image of each random transform, run on the cached images as MONAI runs them by default
    (metadata tracked) and as medseg runs them (``UntrackedCompose``: plain tensors)."""
    from monai.data import set_track_meta
    from monai.transforms import Compose

    *preprocessing, chain = dataset.transform.transforms  # the UntrackedCompose after the cached preprocessing
    items = [Compose(preprocessing)(dict(record)) for record in dataset.data]  # what the cache holds
    columns = {}
    for tracked in (True, False):
        costs = [[] for _ in chain.transforms]
        for _ in range(repeats):
            totals = [0.0] * len(chain.transforms)
            set_track_meta(tracked)
            try:
                for item in items:
                    data = dict(item)
                    for index, transform in enumerate(chain.transforms):
                        started = time.perf_counter()
                        data = transform(data)
                        totals[index] += time.perf_counter() - started
            finally:
                set_track_meta(True)
            for index, total in enumerate(totals):
                costs[index].append(total * 1000 / len(items))
        columns[tracked] = [statistics.median(c) for c in costs]
    print("\n| augmentation transform | ms/image, metadata tracked | ms/image, plain tensors (medseg) |")
    print("| --- | --- | --- |")
    for index, transform in enumerate(chain.transforms):
        print(f"| {type(transform).__name__} | {columns[True][index]:.2f} | {columns[False][index]:.2f} |")
    print(f"| all | {sum(columns[True]):.2f} | {sum(columns[False]):.2f} |")


def synthetic_ph2(folder: Path, width: int, height: int, count: int = 98) -> Path:
    """PH2-like JPEG photographs with PNG masks (when the real data is absent, or to try larger photographs)."""
    rng = np.random.default_rng(0)
    (folder / "ph2" / "images").mkdir(parents=True)
    (folder / "ph2" / "masks").mkdir(parents=True)
    yy, xx = np.mgrid[:height, :width]
    for i in range(count):
        cy, cx = rng.uniform(0.3, 0.7) * height, rng.uniform(0.3, 0.7) * width
        r = rng.uniform(0.12, 0.28) * min(width, height)
        lesion = (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
        image = rng.normal(190, 12, (height, width, 3))
        image[lesion] -= 90
        Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(folder / "ph2" / "images" / f"c{i:03d}.jpg")
        Image.fromarray((lesion * 255).astype(np.uint8)).save(folder / "ph2" / "masks" / f"c{i:03d}.png")
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=2, help="epochs per measurement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-compile", action="store_true", help="leave out the torch.compile variant")
    parser.add_argument(
        "--data-only", action="store_true", help="time the loaders alone and each augmentation transform, no network"
    )
    parser.add_argument(
        "--synthetic-size",
        type=int,
        nargs=2,
        metavar=("W", "H"),
        help="train on synthetic JPEGs of this size instead of PH2 (e.g. 2048 1536, ISIC-sized photographs)",
    )
    args = parser.parse_args()

    scratch = tempfile.TemporaryDirectory()
    data_root = os.environ.get("MEDSEG_DATA_ROOT")
    if args.synthetic_size or not data_root or not (Path(data_root) / "ph2").is_dir():
        width, height = args.synthetic_size or (512, 384)
        data_root = str(synthetic_ph2(Path(scratch.name), width, height))
        why = "" if args.synthetic_size else " (PH2 not found: set MEDSEG_DATA_ROOT)"
        print(f"synthetic {width}x{height} JPEGs{why}")
    overrides = [f"data.root={data_root}", "data.synthetic.fallback=false", "tracking.enabled=false"]
    overrides.append(f"data.split.file={Path(scratch.name) / 'splits.json'}" if scratch.name in data_root else "")
    cfg = load_config(PIPELINE, [o for o in overrides if o])
    torch.set_num_threads(cfg.training.num_threads or os.cpu_count() or 1)
    data = prepare_data(data_settings(cfg))
    records = data.subset("train")
    size, batch = cfg.preprocessing.spatial_size[0], cfg.training.batch_size
    print(f"{len(records)} training images -> {size}x{size}, batch {batch}, {torch.get_num_threads()} threads")

    tutorial_loader = torch.utils.data.DataLoader(TutorialDataset(records, size), batch_size=batch, shuffle=True)
    started = time.perf_counter()
    medseg_loader, _ = build_loaders(training_settings(cfg), data)
    print(f"medseg cache build (once per training run): {time.perf_counter() - started:.1f} s")
    worker_cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"num_workers": 1})})
    worker_loader, _ = build_loaders(training_settings(worker_cfg), data)

    if args.data_only:
        for name, loader in (("tutorial", tutorial_loader), ("medseg", medseg_loader)):
            times = []
            for _ in range(args.repeats):
                started = time.perf_counter()
                for _batch in loader:
                    pass
                times.append(time.perf_counter() - started)
            print(f"{name} loader alone: {statistics.median(times):.2f} s per epoch (median of {args.repeats})")
        augmentation_costs(medseg_loader.dataset, args.repeats)
        return
    variants: dict[str, tuple[Iterable, Callable[[dict], float]]] = {
        "tutorial (decode+resize per read, fp32 NCHW)": (tutorial_loader, make_step(cfg)),
        "medseg (cached, fp32 NCHW)": (medseg_loader, make_step(cfg)),
        "medseg + channels-last": (medseg_loader, make_step(cfg, channels_last=True)),
        "medseg + 1 loader worker": (worker_loader, make_step(cfg)),
    }
    if cpu_has_native_bf16():  # emulated bf16 (~20x slower) is never what medseg runs
        variants["medseg + bf16 autocast"] = (medseg_loader, make_step(cfg, bf16=True))
        variants["medseg + channels-last + bf16"] = (medseg_loader, make_step(cfg, channels_last=True, bf16=True))
    else:
        print("bf16 variants left out: this CPU has no native bf16 (medseg trains in fp32 here)")
    step, choice = auto_step(cfg, medseg_loader)
    variants[f"medseg, memory_format auto ({choice})"] = (medseg_loader, step)
    if not args.skip_compile:  # training.compile: true, alone and with the fastest layout and precision here
        variants["medseg + torch.compile"] = (medseg_loader, make_step(cfg, compiled=True))
        native = cpu_has_native_bf16()
        variants[f"medseg + torch.compile + channels-last{' + bf16' if native else ''}"] = (
            medseg_loader,
            make_step(cfg, channels_last=True, compiled=True, bf16=native),
        )
    for name, (loader, step) in variants.items():  # warm-up: allocator, oneDNN kernels, compilation
        started = time.perf_counter()
        epoch_rate(loader, step, len(records), 1)
        print(f"warm-up {name}: {time.perf_counter() - started:.1f} s")
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeats):  # interleaved, so that drifts in machine load hit every variant
        for name, (loader, step) in variants.items():
            rates[name].append(epoch_rate(loader, step, len(records), args.epochs))
    baseline = statistics.median(rates[next(iter(variants))])
    print(f"\nmedian of {args.repeats} x {args.epochs} epochs")
    print("| variant | samples/s | ratio vs tutorial |\n| --- | --- | --- |")
    for name, values in rates.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.1f} | {median / baseline:.2f}x |")


if __name__ == "__main__":
    main()
