"""Start-up time of ``medseg --help`` against the imports it defers, measured in the same run.

    python benchmarks/startup.py [--repeats 7]

Each command runs in a fresh interpreter. The baseline is what an eager CLI would pay before printing its
help: importing torch, MONAI and MLflow. Prints medians and the ratio; the target is ``medseg --help``
under 0.5 s.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time

COMMANDS = {
    "medseg --help": [shutil.which("medseg") or "medseg", "--help"],
    "python -c pass (interpreter alone)": [sys.executable, "-c", "pass"],
    "eager imports: torch, monai, mlflow": [sys.executable, "-c", "import torch, monai, mlflow"],
}
TARGET_SECONDS = 0.5


def seconds(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    for command in COMMANDS.values():  # warm the file-system cache once
        seconds(command)
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(args.repeats):
        for name, command in COMMANDS.items():
            times[name].append(seconds(command))
    help_median = statistics.median(times["medseg --help"])
    print(f"median of {args.repeats} fresh interpreters")
    print("| command | median s | min s | max s |\n| --- | --- | --- | --- |")
    for name, values in times.items():
        print(f"| {name} | {statistics.median(values):.3f} | {min(values):.3f} | {max(values):.3f} |")
    eager = statistics.median(times["eager imports: torch, monai, mlflow"])
    verdict = "meets" if help_median < TARGET_SECONDS else "misses"
    print(
        f"\nmedseg --help {help_median:.3f} s ({verdict} the {TARGET_SECONDS} s target); "
        f"{eager / help_median:.1f}x faster than importing the stack eagerly"
    )


if __name__ == "__main__":
    main()
