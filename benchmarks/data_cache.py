"""Training from a disk cache against the in-memory cache and no cache, on synthetic volumes whose in-memory cache
exceeds a RAM cap: samples/s (median of epochs after the first) and the peak RSS each mode adds over the imports.

    python benchmarks/data_cache.py [--cases 20] [--size 96] [--epochs 3]

Each mode runs in its own process (its peak RSS is its own). A cache's memory is its peak RSS above the no-cache
run's (the same network, loader and working set); the cap is 60 % of the in-memory cache's estimate: the disk cache
must stay under it and train at a stated fraction of in-memory speed.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_cases(root: Path, count: int, size: int) -> list[dict]:
    import nibabel as nib
    import numpy as np

    rng = np.random.default_rng(0)
    records = []
    for index in range(count):
        grid = np.indices((size,) * 3).astype(np.float32)
        centre = rng.uniform(size * 0.3, size * 0.7, 3)
        ball = ((grid - centre[:, None, None, None]) ** 2).sum(0) < (size * 0.15) ** 2
        paths = []
        for channel in range(2):
            volume = (rng.normal(100, 20, (size,) * 3) + 80 * ball * (channel + 1)).astype(np.int16)
            path = root / f"c{index}_{channel}.nii.gz"
            nib.save(nib.Nifti1Image(volume, np.eye(4)), path)
            paths.append(str(path))
        label = root / f"c{index}_label.nii.gz"
        nib.save(nib.Nifti1Image(ball.astype(np.uint8), np.eye(4)), label)
        records.append({"id": f"c{index}", "image": paths, "label": str(label)})
    return records


def run_mode(mode: str, records_file: Path, cache_dir: Path, epochs: int) -> dict:
    import torch
    from monai.data import DataLoader

    from medseg.config.schema import PipelineConfig
    from medseg.config.settings import data_settings, transform_settings
    from medseg.data.cache import cached_dataset
    from medseg.models.registry import build_loss, build_network
    from medseg.transforms import train_transforms

    torch.set_num_threads(2)
    records = json.loads(records_file.read_text())
    cfg = PipelineConfig(
        name="cache-bench",
        spatial_dims=3,
        model={"in_channels": 2, "args": {"channels": [8, 16, 32], "strides": [2, 2], "num_res_units": 0}},
        preprocessing={"patch_size": [48, 48, 48], "intensity": {"kind": "mri"}, "crop_foreground": False},
        training={"samples_per_volume": 2, "batch_size": 2},
        data={"cache": mode, "cache_dir": str(cache_dir)},
    )
    network = build_network("unet", 3, 2, 1, dict(cfg.model.args))
    loss_function = build_loss("dice_ce", 1)
    optimizer = torch.optim.AdamW(network.parameters(), 1e-3)
    baseline = rss_mb()
    started = time.perf_counter()
    dataset = cached_dataset(data_settings(cfg), records, train_transforms(transform_settings(cfg)))
    build_seconds = time.perf_counter() - started
    loader = DataLoader(dataset, batch_size=2, shuffle=True, num_workers=0)
    rates = []
    for _ in range(epochs):
        begun, samples = time.perf_counter(), 0
        for batch in loader:
            loss = loss_function(network(batch["image"]), batch["label"])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            samples += batch["image"].shape[0]
        rates.append(samples / (time.perf_counter() - begun))
    return {"mode": mode, "build_s": build_seconds, "rates": rates, "added_rss_mb": rss_mb() - baseline}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=20)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--worker", nargs=3, metavar=("MODE", "RECORDS", "CACHE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        mode, records, cache = args.worker
        print(json.dumps(run_mode(mode, Path(records), Path(cache), args.epochs)))
        return
    from medseg.config.schema import PipelineConfig
    from medseg.data.cache import estimated_cache_bytes

    with tempfile.TemporaryDirectory(prefix="medseg-cache-bench-") as tmp:
        root = Path(tmp)
        records = make_cases(root, args.cases, args.size)
        (root / "records.json").write_text(json.dumps(records))
        cfg = PipelineConfig(name="estimate", spatial_dims=3, model={"in_channels": 2})
        memory_mb = estimated_cache_bytes(cfg, records) / 2**20
        cap = 0.6 * memory_mb
        print(f"{args.cases} cases of 2x{args.size}^3: in-memory cache ~{memory_mb:.0f} MB; RAM cap {cap:.0f} MB")
        results = {}
        for mode in ("none", "memory", "disk", "disk"):  # the second disk run reads the cache the first wrote
            command = [sys.executable, __file__, "--epochs", str(args.epochs), "--worker", mode]
            command += [str(root / "records.json"), str(root / "cache")]
            out = subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
            result = json.loads(out)
            key = mode if mode not in results else "disk (warm)"
            results[key] = result
            rate = statistics.median(result["rates"][1:] or result["rates"])
            cache_mb = result["added_rss_mb"] - results["none"]["added_rss_mb"]
            print(
                f"{key:12s} build {result['build_s']:6.1f} s  {rate:6.2f} samples/s  peak RSS "
                f"+{result['added_rss_mb']:4.0f} MB ({cache_mb:+5.0f} MB over no cache: "
                f"{'under' if cache_mb < cap else 'OVER'} the cap)"
            )
        memory_rate = statistics.median(results["memory"]["rates"][1:])
        for key in ("disk (warm)", "none"):
            rate = statistics.median(results[key]["rates"][1:])
            print(f"{key} / memory samples/s: {rate / memory_rate:.2f}")


if __name__ == "__main__":
    main()
