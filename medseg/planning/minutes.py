"""``medseg plan --minutes M``: a network, input and batch chosen for a training budget on the machine at hand.

The rule: of the timed candidates (:mod:`.timing`), the largest input (the memory plan's, then smaller), at that input
the largest network (width, then depth), then the largest batch, whose estimated epoch leaves at least E epochs in M
minutes, where E = max(MIN_EPOCHS, ceil(MIN_SAMPLES / samples an epoch)): every training case seen MIN_EPOCHS times
and, on a small dataset, enough training images (3D: patches) seen in all. Input first: on PH2 a narrow network at the
full input beat a wide one at a smaller input at equal minutes. The training then fits its cosine schedule to its own
timed epochs, so the estimate only has to choose the candidate. The constants are in one place below, each with the
measurement behind it.
"""

from __future__ import annotations

import logging
import math
import os
import statistics
import time
from typing import Any

from medseg.config.schema import PipelineConfig
from medseg.core.errors import ConfigError
from medseg.planning.networks import pooling_levels, pooling_plan, round_patch, sized_network
from medseg.planning.timing import TimedCandidate, machine_name, precision_name, time_training_step

log = logging.getLogger(__name__)

# Each training case seen at least this often: where PH2's test Dice stops rising at 10 minutes on the AVX2 CPU,
# 73 epochs 0.9391, 87 epochs 0.9425, 106 epochs 0.9443 (and 190 epochs on the AMX Xeon 0.9450); PH2 folds of 30
# epochs 0.9284, of 60 0.9367; the planned BraTS DynUNet's 23 epochs 0.8280 against the shipped 125 epochs' 0.8595
# (BENCHMARKS.md, issues #12 and #14).
MIN_EPOCHS = 100
# Training images (2D) / volumes (3D) seen at least, so that a small dataset gets enough of them (PH2 alone cannot tell
# epochs from images seen apart). 2D 30,000, 307 epochs of PH2's 98 training images: with a floor of 1,200 optimiser
# steps (100 epochs of 12 steps) the rule chose UNet 16-320 on the AMX Xeon, 181-183 epochs in 10 minutes, and it lost
# to the shipped 8-128's 322-334 epochs by 0.0071 and 0.0054 test Dice (seeds 42 and 1; BENCHMARKS.md "Planning for
# minutes"), as 16-256's 42 epochs had lost to 8-128's 105 on the AVX2 CPU (0.9199 against 0.9425): on PH2 epochs beat
# width well past 100. Counted in images, not optimiser steps, so that halving the batch cannot buy a wider network. 3D:
# patches (samples_per_volume per volume an epoch), 3,000, about what the hand-tuned BraTS pipeline gets in 15 minutes
# here (280 epochs x 4 patches x 3 volumes = 3,360), as PH2's floor is about its hand-tuned 322 epochs. Counted in
# volumes (300, then 1,000) a plan took a DynUNet to 89 epochs x 2 patches (0.817 and 0.736 on the first two BraTS
# folds against the hand-tuned 0.911 and 0.848) and then a UNet 32-320 with one patch a volume (BENCHMARKS.md, #28).
MIN_SAMPLES = {2: 30_000, 3: 3_000}
# An epoch over its timed optimiser steps (loading, augmentation, validation): PH2 on the AVX2 CPU 5.7 s an epoch for
# 12 steps of 0.379 s (1.25x) and 13.5 s for 12 of 0.933 s (1.21x). 3D, BraTS folds of 4 volumes at 15 minutes on the
# AMX Xeon: the UNet 16-256 (4 patches of 96^3, 0.497 s a step) 280 epochs in 14.5 min (1.56x), the DynUNet 8-256
# (2 of 96x128x96, 1.884 s) 89 in 14.7 min (1.32x): validation by sliding window and loading weigh more on cheap steps.
EPOCH_OVERHEAD = {2: 1.25, 3: 1.5}
# Inputs tried, per axis, as fractions of the memory plan's: 192 and 160 px traded input for epochs on PH2 within
# 0.005 of 256 px at equal minutes.
INPUT_SCALES = (1.0, 0.75, 0.5)
# First-level filters tried (doubling per level up to FILTER_CAP, nnU-Net's cap), each at the pooling plan's depth
# and one level less: half the preset's widths (8-128) won PH2's CPU budget, 0.9443 against 0.9199 for 16-256.
WIDTHS = (8, 16, 32)
FILTER_CAP = 320
# Seconds of timing in all before no new candidate is timed (the search stops with the best fit so far).
SEARCH_SECONDS = {"cpu": 20.0, "cuda": 60.0}
# A first timed step over this multiple of the step time that would fit ends that candidate's timing: it cannot fit.
GIVE_UP = 2.0
# training.epochs written: this multiple of the estimated epochs, a cap only; the run fits its schedule to the epochs
# its own first epochs say fit, so a machine up to this much faster than the estimate still uses its minutes.
EPOCH_CAP = 2.0

# The shipped pipelines' hand-tuned choices that generalise, as rules (pipelines/skin_lesion.yaml, BENCHMARKS.md).
BUDGET_RULES: dict[str, tuple[Any, str]] = {
    "schedule.length": (
        "max_minutes",
        "the cosine schedule runs over the epochs that fit training.max_minutes (timed on the first epochs, "
        "again halfway), so the run ends annealed on any machine",
    ),
    "training.early_stopping_patience": (
        None,
        "no early stopping within a fitted schedule: validation Dice is noisy epoch to epoch (patience 15 ended a "
        "PH2 seed at epoch 41, test Dice 0.919)",
    ),
    "training.keep": (
        "final",
        "the final, annealed epoch: the best of the validation epochs picked mid-schedule epochs 0.0015-0.0095 "
        "lower in test Dice in three PH2 runs",
    ),
}
TTA_RULE: dict[int, tuple[bool, str]] = {
    2: (True, "mirror TTA: +0.0028 test Dice over three PH2 models for 4 passes an image"),
    3: (False, "no TTA in 3D: 8 mirrored sliding windows cost 8x the inference, the gain not measured here"),
}
VALIDATE_EVERY_3D = (5, "validation by sliding window over whole volumes every 5 epochs, as configs/mri_3d.yaml")


def steps_per_epoch(spatial_dims: int, training_cases: int, batch: int) -> int:
    """Optimiser steps an epoch, as the training loader makes them (2D: full batches; 3D: one volume a step)."""
    if spatial_dims == 3:
        return training_cases
    return training_cases // batch if training_cases > batch else 1


def required_epochs(spatial_dims: int, training_cases: int, patches: int = 1) -> int:
    """E of the rule: every case seen MIN_EPOCHS times and at least MIN_SAMPLES images (3D: ``patches`` a volume an
    epoch) seen in all."""
    per_epoch = max(1, training_cases) * (patches if spatial_dims == 3 else 1)
    return max(MIN_EPOCHS, math.ceil(MIN_SAMPLES[spatial_dims] / per_epoch))


class MinutesSearch:
    """Times candidates of ``base`` (a planned configuration) on ``device`` for a ``minutes`` budget."""

    def __init__(self, base: PipelineConfig, minutes: float, device: str, training_cases: int) -> None:
        self.base, self.budget, self.device, self.cases = base, minutes * 60, device, training_cases
        self.dims = base.spatial_dims
        self.size_key = "preprocessing.spatial_size" if self.dims == 2 else "preprocessing.patch_size"
        self.batch_key = "training.batch_size" if self.dims == 2 else "training.samples_per_volume"
        self.timed: list[TimedCandidate] = []
        self.started = time.perf_counter()
        self.search_seconds = SEARCH_SECONDS["cuda" if device.startswith("cuda") else "cpu"]

    def sizes(self) -> list[list[int]]:
        largest = list(self.base.preprocessing.spatial_size if self.dims == 2 else self.base.preprocessing.patch_size)
        sizes: list[list[int]] = []
        for scale in INPUT_SCALES:
            scaled = [p * scale for p in largest]
            size = round_patch(scaled, pooling_plan([int(p) for p in scaled]))
            if size not in sizes:
                sizes.append(size)
        return sizes

    def networks(self, size: list[int]) -> list[tuple[int, int]]:
        fewest = 2
        deepest = max(fewest, pooling_levels(self.dims, size))
        depths = sorted({max(fewest, deepest - 1), deepest})
        return [(width, depth) for width in WIDTHS for depth in depths]

    def batches(self) -> list[int]:
        largest = int(self.base.training.batch_size if self.dims == 2 else self.base.training.samples_per_volume)
        return [largest] if largest == 1 else [largest, largest // 2]

    def time(self, size: list[int], width: int, levels: int, batch: int, force: bool = False) -> TimedCandidate | None:
        """Time one candidate (None: the search's seconds are spent, unless ``force``)."""
        name, args = sized_network(self.dims, size, width, levels, FILTER_CAP)
        filters = args["channels"]
        label = f"{name} {filters[0]}-{filters[-1]} ({levels} levels) {'x'.join(map(str, size))} batch {batch}"
        done = next((c for c in self.timed if c.label == label), None)
        if done is not None or (not force and time.perf_counter() - self.started > self.search_seconds):
            return done
        steps = steps_per_epoch(self.dims, self.cases, batch)
        need = required_epochs(self.dims, self.cases, batch)
        allowed_step = self.budget / (need * steps * EPOCH_OVERHEAD[self.dims])
        cfg = self.base.with_values(
            {"model.name": name, "model.args": args, self.size_key: size, self.batch_key: batch}
        )
        warmup, timed = time_training_step(cfg, size, batch, self.device, GIVE_UP * allowed_step)
        step = statistics.median(timed)
        epoch = steps * step * EPOCH_OVERHEAD[self.dims]
        fit = math.floor(self.budget / epoch)
        candidate = TimedCandidate(
            label, name, args, size, batch, steps, warmup, step, len(timed), epoch, fit, fit >= need
        )
        log.info("plan --minutes: %s", candidate.describe())
        self.timed.append(candidate)
        return candidate

    def largest_fitting_batch(self, size: list[int], width: int, levels: int) -> TimedCandidate | None:
        """The largest batch of this network and input that leaves the rule's epochs (None: no batch does, or the
        search's seconds are spent)."""
        for batch in self.batches():
            candidate = self.time(size, width, levels, batch)
            if candidate is None or candidate.epochs_fit < 1:
                return None  # (a smaller batch takes about as long an epoch where not even one fits)
            if candidate.fits:
                return candidate
        return None

    def choose(self) -> TimedCandidate:
        """The rule (module docstring); when no candidate leaves E epochs, the cheapest one timed."""
        sizes = self.sizes()
        width, levels = self.networks(sizes[-1])[0]  # the process's first steps pay one-time costs: not recorded
        name, args = sized_network(self.dims, sizes[-1], width, levels, FILTER_CAP)
        cfg = self.base.with_values({"model.name": name, "model.args": args, self.size_key: sizes[-1]})
        time_training_step(cfg, sizes[-1], 1, self.device, 0.0)  # (a warm-up and one step)
        for size in sizes:
            best = None
            for width, levels in self.networks(size):
                fit = self.largest_fitting_batch(size, width, levels)
                if fit is None:
                    break  # wider or deeper networks cost more
                best = fit
            if best is not None:
                return best
        width, levels = self.networks(sizes[-1])[0]
        self.time(sizes[-1], width, levels, self.batches()[0], force=True)
        cheapest = min(self.timed, key=lambda c: c.epoch_seconds)
        if cheapest.epochs_fit < 1:
            raise ConfigError(
                f"--minutes {self.budget / 60:g}: too short for one epoch of the smallest candidate "
                f"({cheapest.label}: ~{cheapest.epoch_seconds:.3g} s an epoch measured)"
            )
        return cheapest


def plan_for_minutes(base: PipelineConfig, minutes: float, device: str, training_cases: int) -> dict[str, Any]:
    """The values (dotted keys) with their reasons, the YAML comment lines and the timing record of a --minutes plan.

    Returns:
        ``{"values": {key: (value, reason)}, "comments": [...], "timing": {...}, "notes": [...]}``.
    """
    import torch

    cpus, load = os.cpu_count() or 1, os.getloadavg()[0]  # other work on the CPU slows every timed step
    search = MinutesSearch(base, minutes, device, training_cases)
    chosen = search.choose()
    seconds = time.perf_counter() - search.started
    dims = base.spatial_dims
    need = required_epochs(dims, training_cases, chosen.batch)
    precision = precision_name(base, device)
    machine = machine_name(device)
    threads = torch.get_num_threads() if not device.startswith("cuda") else None
    rule = (
        f"the largest input, then network, then batch whose epoch leaves >= {need} epochs in {minutes:g} min "
        f"(each case {MIN_EPOCHS}x, >= {MIN_SAMPLES[dims]:,} {'images' if dims == 2 else 'patches'} seen)"
    )
    why = f"{rule}: ~{chosen.epoch_seconds:.3g} s an epoch, {chosen.epochs_fit} fit"
    if not chosen.fits:
        why += " (fewer than the rule asks: none fits it, the cheapest candidate is taken; give more minutes)"
    values: dict[str, Any] = {
        "model.name": (chosen.network, "the planned U-Net, sized by timing"),
        "model.args": (chosen.model_args, why),
        search.size_key: (chosen.size, f"timed on {machine} ({precision}): {chosen.label} (rule: model.args)"),
        search.batch_key: (
            chosen.batch,
            f"{chosen.steps_per_epoch} optimiser step(s) an epoch, {training_cases} cases",
        ),
        "training.max_minutes": (minutes, "--minutes"),
        "training.epochs": (
            max(need, math.ceil(EPOCH_CAP * chosen.epochs_fit)),
            f"a cap, {EPOCH_CAP:g}x the {chosen.epochs_fit} estimated: the run fits its schedule to its timed epochs",
        ),
        **BUDGET_RULES,
        "inference.tta": TTA_RULE[dims],
    }
    if dims == 3:
        values["training.val_every"] = VALIDATE_EVERY_3D
    where = f"{machine} ({device}, {precision}" + (f", {threads} threads)" if threads else ")")
    header = (
        f"timed {len(search.timed)} candidates in {seconds:.1f} s on {where}: median of the steps after a warm-up; "
        f"epoch = steps x step x {EPOCH_OVERHEAD[dims]:g}"
    )
    comments = [header, *[f"candidate: {c.describe()}" + (" <- chosen" if c is chosen else "") for c in search.timed]]
    timing = {
        "machine": machine,
        "device": device,
        "precision": precision,
        "threads": threads,
        "load_average": round(load, 2),
        "cpus": cpus,
        "minutes": minutes,
        "training_cases": training_cases,
        "search_seconds": round(seconds, 2),
        "rule": rule,
        "chosen": chosen.label,
        "candidates": [c.record() for c in search.timed],
    }
    notes = [f"timed {len(search.timed)} candidates in {seconds:.1f} s on {where}; chose {chosen.label}"]
    if load >= cpus and not device.startswith("cuda"):
        notes.append(f"load average {load:.1f} on {cpus} CPUs: other work shared the CPU, the steps timed slow")
    if not chosen.fits:
        notes.append(f"only {chosen.epochs_fit} epochs fit {minutes:g} min, the rule asks {need}: give more minutes")
    log.info("plan --minutes: %s", notes[0])
    return {"values": values, "comments": comments, "timing": timing, "notes": notes}
