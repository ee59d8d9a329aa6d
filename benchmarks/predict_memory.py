"""Peak memory and time of ``medseg predict`` on CT-sized volumes (512 x 512 x 300), against a plain MONAI script.

    python benchmarks/predict_memory.py [--cases 2] [--spacing 1.5 1.5 2.0] [--shape 512 512 300]

Both sides run in their own subprocess on the same volumes and the same (untrained) network with the CT
preset: load, RAS, resample, HU window, sliding window (ROI 96x96x64, overlap 0.5, Gaussian), back to the
scan's grid, write a uint8 mask. The baseline is the straightforward MONAI tutorial pipeline (keeps the
preprocessed image and its metadata while inverting, probabilities in float32 at both grids). Prints the peak
RSS of each (GNU time's maximum resident set size), seconds per case (median) and the ratios.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import nibabel as nib
import numpy as np

BASELINE = textwrap.dedent(
    """
    import sys, time, torch, numpy as np, nibabel as nib
    from monai.inferers import sliding_window_inference
    from monai.transforms import (Compose, EnsureChannelFirstd, Invertd, LoadImaged, Orientationd,
                                  ScaleIntensityRanged, Spacingd)
    from medseg.models.checkpoint import load_checkpoint, network_from_checkpoint
    ckpt, spacing, out, *scans = sys.argv[1], tuple(map(float, sys.argv[2].split(','))), sys.argv[3], *sys.argv[4:]
    net = network_from_checkpoint(load_checkpoint(__import__('pathlib').Path(ckpt)), ckpt)
    pre = Compose([LoadImaged('image'), EnsureChannelFirstd('image'), Orientationd('image', 'RAS'),
                   Spacingd('image', spacing), ScaleIntensityRanged('image', -160, 240, 0, 1, clip=True)])
    inv = Invertd('pred', pre, orig_keys='image', nearest_interp=False)
    for scan in scans:
        t = time.perf_counter()
        d = pre({'image': scan})
        with torch.no_grad():
            d['pred'] = torch.sigmoid(sliding_window_inference(d['image'][None], (96, 96, 64), 2, net, 0.5,
                                                               mode='gaussian'))[0]
        mask = (np.asarray(inv(d)['pred'][0]) > 0.5).astype(np.uint8)
        ref = nib.load(scan)
        nib.save(nib.Nifti1Image(mask, ref.affine, ref.header), f"{out}/{time.time_ns()}.nii.gz")
        print('seconds', time.perf_counter() - t, flush=True)
    """
)


def make_volume(path: Path, shape: tuple[int, int, int], seed: int) -> None:
    """A CT-like int16 volume: air, an elliptic body (soft tissue), a bright organ blob, noise."""
    rng = np.random.default_rng(seed)
    x, y, z = np.ogrid[: shape[0], : shape[1], : shape[2]]
    body = ((x - shape[0] / 2) / (shape[0] * 0.42)) ** 2 + ((y - shape[1] / 2) / (shape[1] * 0.35)) ** 2 < 1
    organ = ((x - shape[0] * 0.4) / 60) ** 2 + ((y - shape[1] * 0.45) / 50) ** 2 + ((z - shape[2] / 2) / 70) ** 2 < 1
    volume = np.full(shape, -1000, np.int16)
    volume[np.broadcast_to(body, shape)] = 40
    volume[np.broadcast_to(organ, shape)] = 120
    volume += rng.normal(0, 15, shape).astype(np.int16)
    affine = np.diag([0.8, 0.8, 1.5, 1.0])
    nib.save(nib.Nifti1Image(volume, affine), path)


def run_child(command: list[str]) -> tuple[float, list[float]]:
    """Run a command under GNU time; return its peak RSS in GiB and the per-case seconds it printed."""
    done = subprocess.run(
        ["/usr/bin/time", "-f", "MAXRSS_KB %M", *command],
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
    )
    if done.returncode != 0:
        raise SystemExit(f"{command[:4]} failed:\n{done.stderr[-3000:]}")
    peak_kb = next(int(line.split()[1]) for line in reversed(done.stderr.splitlines()) if line.startswith("MAXRSS_KB"))
    seconds = [float(line.split()[1]) for line in done.stdout.splitlines() if line.startswith("seconds ")]
    return peak_kb / 1024**2, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=2)
    parser.add_argument("--spacing", type=float, nargs=3, default=(1.5, 1.5, 2.0))
    parser.add_argument("--shape", type=int, nargs=3, default=(512, 512, 300))
    args = parser.parse_args()

    from medseg.config.loading import load_config
    from medseg.config.settings import network_spec
    from medseg.models.checkpoint import save_checkpoint
    from medseg.models.registry import build_network

    repo = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        scans = tmp_path / "scans"
        scans.mkdir()
        for case in range(args.cases):
            make_volume(scans / f"ct{case}.nii.gz", tuple(args.shape), case)
        overrides = [
            f"preprocessing.spacing=[{', '.join(map(str, args.spacing))}]",
            "preprocessing.patch_size=[96, 96, 64]",
            "inference.sw_batch_size=2",
            "postprocessing.mode=on",
        ]
        cfg = load_config(repo / "pipelines" / "ct_liver.yaml", overrides)
        network = build_network(cfg.model.name, 3, 1, 1, cfg.model.args)
        checkpoint = tmp_path / "model" / "best.pt"
        save_checkpoint(
            checkpoint, {"state_dict": network.state_dict(), "network": network_spec(cfg), "config": cfg.to_dict()}
        )

        started = time.perf_counter()
        medseg_peak, _ = run_child(
            [
                sys.executable,
                "-m",
                "medseg",
                "predict",
                "-m",
                str(checkpoint),
                "-i",
                str(scans),
                "-o",
                str(tmp_path / "out"),
                "--no-overlays",
            ]
        )
        medseg_seconds = (time.perf_counter() - started) / args.cases  # includes start-up, model load
        summary = (tmp_path / "out" / "summary.csv").read_text().splitlines()[1:]
        case_seconds = [float(line.split(",")[2]) for line in summary]

        (tmp_path / "baseline").mkdir()
        spacing = ",".join(map(str, args.spacing))
        baseline_peak, baseline_seconds = run_child(
            [
                sys.executable,
                "-c",
                BASELINE,
                str(checkpoint),
                spacing,
                str(tmp_path / "baseline"),
                *map(str, sorted(scans.iterdir())),
            ]
        )
    shape = "x".join(map(str, args.shape))
    print(f"{args.cases} volumes {shape} int16, spacing 0.8x0.8x1.5 -> {spacing} mm, ROI 96x96x64, overlap 0.5")
    print(
        f"medseg predict : peak RSS {medseg_peak:.2f} GiB, {statistics.median(case_seconds):.1f} s/case (median), "
        f"{medseg_seconds:.1f} s/case incl. start-up"
    )
    print(f"plain MONAI    : peak RSS {baseline_peak:.2f} GiB, {statistics.median(baseline_seconds):.1f} s/case")
    print(
        f"ratio          : memory {baseline_peak / medseg_peak:.2f}x less, speed "
        f"{statistics.median(baseline_seconds) / statistics.median(case_seconds):.2f}x"
    )


if __name__ == "__main__":
    main()
