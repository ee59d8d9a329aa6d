"""``medseg plan``: a pipeline YAML derived from a dataset fingerprint (:mod:`.fingerprint`), every choice explained.

The rules follow nnU-Net's: target spacing the median (the 10th percentile on the coarse axis of anisotropic
data), patch and batch size fitted to a memory budget measured with one forward/backward pass, pooling per axis
until it reaches 4-8 voxels, normalisation by modality (CT: clipped to the foreground's 0.5-99.5 percentiles and
z-scored with foreground statistics; MRI: per-case z-score over non-zero voxels; RGB: per-channel scaling). With a
training budget (``--minutes``), :mod:`.minutes` then chooses the network, input and batch by timing them here.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from medseg.config.schema import PipelineConfig
from medseg.config.settings import data_settings
from medseg.core.atomic import atomic_write_text
from medseg.core.errors import DataError
from medseg.data.discovery import find_cases
from medseg.imageio.formats import is_image_2d
from medseg.planning.fingerprint import Fingerprint, fingerprint_images, fingerprint_volumes
from medseg.planning.networks import MIN_POOLED_SIZE, network_args, pooling_plan, round_patch

log = logging.getLogger(__name__)

ANISOTROPY_LIMIT = 3.0


# ------------------------------------------------------------------------------------------------ decisions


def target_spacing(fingerprint: Fingerprint) -> tuple[list[float], str]:
    """The median spacing; for anisotropic data the coarse axis at the 10th percentile of its spacings."""
    spacing = list(fingerprint.median_spacing)
    if fingerprint.anisotropy <= ANISOTROPY_LIMIT:
        return spacing, f"median spacing of {len(fingerprint.cases)} cases"
    coarse = int(np.argmax(spacing))
    values = [c["spacing"][coarse] for c in fingerprint.cases]
    spacing[coarse] = float(np.percentile(values, 10))
    return spacing, (
        f"median spacing; anisotropic (max/min {fingerprint.anisotropy:.1f} > {ANISOTROPY_LIMIT:g}): "
        f"axis {coarse} at the 10th percentile of its spacings"
    )


def training_memory(cfg: PipelineConfig, patch: list[int], batch: int, device: str = "cpu") -> int:
    """Bytes one training step needs, measured on one forward/backward pass. On a CUDA device: the allocator's
    peak plus Adam's two moments; on the CPU: the tensors autograd saves for the backward pass, plus weights,
    gradients and Adam's two moments (4 copies of the parameters), plus the batch."""
    import torch

    from medseg.models.registry import build_network

    m = cfg.model
    network = build_network(m.name, cfg.spatial_dims, m.in_channels, m.out_channels, m.args).train()
    if device.startswith("cuda"):
        network = network.to(device)
        torch.cuda.reset_peak_memory_stats(device)
        network(torch.zeros((batch, m.in_channels, *patch), device=device)).float().mean().backward()
        moments = 2 * sum(p.numel() * p.element_size() for p in network.parameters())
        return int(torch.cuda.max_memory_allocated(device)) + moments
    saved = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal saved
        saved += tensor.numel() * tensor.element_size()
        return tensor

    batch_tensor = torch.zeros((batch, m.in_channels, *patch))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        output = network(batch_tensor)
    output.float().mean().backward()
    parameters = sum(p.numel() * p.element_size() for p in network.parameters())
    return saved + 4 * parameters + 2 * batch_tensor.numel() * 4 + output.numel() * 4


@dataclass
class Plan:
    """The derived values (dotted keys) and the one-line reason behind each."""

    values: dict[str, Any] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)  # more header lines of the YAML (the timed candidates)
    timing: dict[str, Any] = field(default_factory=dict)  # --minutes: the machine and every timed candidate

    def set(self, key: str, value: Any, reason: str) -> None:
        self.values[key], self.reasons[key] = value, reason


def plan_pipeline(
    fingerprint: Fingerprint,
    data: dict[str, Any],
    name: str,
    memory_gb: float = 4.0,
    max_patch_voxels: int | None = None,
    merge_labels: bool = False,
    device: str = "cpu",
    minutes: float | None = None,
    training_cases: int | None = None,
) -> Plan:
    """Derive a pipeline from a fingerprint. ``data``: the ``data`` section that finds the cases; ``device``: where
    the memory of a training step is measured (``cpu`` or ``cuda[:N]``); ``minutes``: a training budget the network,
    input and batch are then chosen for by timing them there (:mod:`.minutes`), over ``training_cases`` cases."""
    plan = Plan()
    plan.set("name", name, "")
    plan.set("spatial_dims", fingerprint.spatial_dims, f"{fingerprint.spatial_dims}D {fingerprint.modality} data")
    for key, value in data.items():
        plan.set(f"data.{key}", value, "")
    labels = sorted(int(v) for v in fingerprint.class_fractions if int(v) > 0)
    foreground = sum(v for k, v in fingerprint.class_fractions.items() if int(k) > 0)
    if merge_labels or len(labels) <= 1:
        plan.set("model.out_channels", 1, f"binary: labels {labels or [1]} as foreground ({foreground:.2%} of voxels)")
        if fingerprint.spatial_dims == 3 and labels:
            plan.set("data.foreground_labels", labels, "every label value > 0")
    else:
        mapping = {value: index + 1 for index, value in enumerate(labels)}
        fractions = ", ".join(f"{v}: {fingerprint.class_fractions[str(v)]:.2%}" for v in labels)
        plan.set("model.out_channels", len(labels) + 1, f"softmax over background + {len(labels)} labels ({fractions})")
        plan.set("data.label_mapping", mapping, "each label value found, in order")
    plan.set("model.in_channels", fingerprint.channels, f"{fingerprint.channels} channel(s) per case")
    budget = int(memory_gb * 2**30)
    if fingerprint.spatial_dims == 3:
        _plan_volume(plan, fingerprint, budget, max_patch_voxels or 128**3, device)
    else:
        _plan_image(plan, fingerprint, budget, max_patch_voxels or 256 * 256, device)
    if minutes is not None:
        _plan_minutes(plan, minutes, device, training_cases or len(fingerprint.cases))
    return plan


def _plan_minutes(plan: Plan, minutes: float, device: str, training_cases: int) -> None:
    """Network, input, batch and schedule for a ``minutes`` budget, timed on ``device``; the memory plan's input and
    batch are the largest tried."""
    from medseg.planning.minutes import plan_for_minutes

    result = plan_for_minutes(_config_for(plan), minutes, device, training_cases)
    for key, (value, reason) in result["values"].items():
        plan.set(key, value, reason)
    plan.comments.extend(result["comments"])
    plan.notes.extend(result["notes"])
    plan.timing = result["timing"]


def _config_for(plan: Plan) -> PipelineConfig:
    raw: dict[str, Any] = {}
    for key, value in plan.values.items():
        *parents, last = key.split(".")
        section = raw
        for part in parents:
            section = section.setdefault(part, {})
        section[last] = value
    raw.setdefault("data", {}).setdefault("root", "/")
    return PipelineConfig.model_validate(raw)


def _fit(
    plan: Plan,
    spatial_dims: int,
    start: list[float],
    batch: int,
    budget: int,
    cap: int,
    shrink_axis: Any,
    device: str = "cpu",
) -> tuple[list[int], int, int]:
    """Shrink the patch (and then the batch) until one measured training step fits ``budget`` bytes."""
    patch_f = list(start)
    while True:
        strides = pooling_plan([int(p) for p in patch_f])
        patch = round_patch(patch_f, strides)
        name, args = network_args(spatial_dims, patch)
        plan.values["model.name"], plan.values["model.args"] = name, args
        if int(np.prod(patch)) <= cap:
            used = training_memory(_config_for(plan), patch, batch, device)
            if used <= budget:
                return patch, batch, used
        if min(patch) <= 2 * MIN_POOLED_SIZE and batch > 1:
            batch //= 2
        else:
            patch_f = shrink_axis(patch_f)


def _plan_volume(plan: Plan, fingerprint: Fingerprint, budget: int, cap: int, device: str) -> None:
    spacing, why = target_spacing(fingerprint)
    plan.set("preprocessing.spacing", [round(v, 4) for v in spacing], why)
    plan.set("preprocessing.orientation", "RAS", "canonical orientation")
    stats = fingerprint.foreground_intensity
    if fingerprint.modality == "ct":
        low, high = stats[0]["p00_5"], stats[0]["p99_5"]
        mean, std = stats[0]["mean"], stats[0]["std"]
        plan.set(
            "preprocessing.intensity",
            {
                "kind": "ct",
                "window": [round(low, 1), round(high, 1)],
                "scaled_to": [round((low - mean) / std, 4), round((high - mean) / std, 4)],
            },
            f"CT: clip to the foreground 0.5-99.5 percentiles, z-score with foreground mean {mean:.1f} sd {std:.1f}",
        )
    else:
        plan.set("preprocessing.intensity", {"kind": "mri"}, "MRI: per-case z-score over non-zero voxels")
    resampled = [
        s * sp / t for s, sp, t in zip(fingerprint.median_shape, fingerprint.median_spacing, spacing, strict=True)
    ]

    def shrink(patch: list[float]) -> list[float]:
        physical = [p * s for p, s in zip(patch, spacing, strict=True)]
        axis = int(np.argmax(physical))  # the physically longest axis first, as nnU-Net
        return [p * (0.8 if i == axis else 1.0) for i, p in enumerate(patch)]

    patch, batch, used = _fit(plan, 3, resampled, 2, budget, cap, shrink, device)
    shape = "x".join(f"{v:.0f}" for v in resampled)
    plan.set(
        "preprocessing.patch_size",
        patch,
        f"median resampled shape {shape}, shrunk to fit {budget / 2**30:.1f} GiB (measured {used / 2**30:.2f} GiB"
        f" for batch {batch}) and {cap:,} voxels",
    )
    plan.set("training.batch_size", 1, "one volume per step")
    plan.set("training.samples_per_volume", batch, f"{batch} patches per step fit the memory budget")
    plan.reasons["model.args"] = f"{len(plan.values['model.args']['strides'])} levels: pool an axis while >= 8 voxels"
    plan.reasons["model.name"] = "DynUNet: strides per axis (nnU-Net's U-Net)"
    if fingerprint.anisotropy > ANISOTROPY_LIMIT:
        plan.notes.append(
            f"anisotropic data (max/min spacing {fingerprint.anisotropy:.1f}): also try a 2D configuration and let "
            "`medseg select` decide"
        )


def _plan_image(plan: Plan, fingerprint: Fingerprint, budget: int, cap: int, device: str) -> None:
    height, width = fingerprint.median_shape
    scale = min(1.0, math.sqrt(cap / (height * width)))

    def shrink(patch: list[float]) -> list[float]:
        return [p * 0.8 for p in patch]

    patch, batch, used = _fit(plan, 2, [height * scale, width * scale], 8, budget, cap, shrink, device)
    plan.set(
        "preprocessing.spatial_size",
        patch,
        f"median image {height:.0f}x{width:.0f}, aspect kept, at most {cap:,} pixels and "
        f"{budget / 2**30:.1f} GiB (measured {used / 2**30:.2f} GiB for batch {batch})",
    )
    plan.set("training.batch_size", batch, "the largest batch up to 8 that fits the memory budget")
    plan.reasons["model.args"] = f"{len(plan.values['model.args']['channels'])} levels: pool while >= 8 pixels"
    plan.reasons["model.name"] = "MONAI UNet with residual units"
    colours = ", ".join(f"{s['mean']:.0f}+-{s['std']:.0f}" for s in fingerprint.foreground_intensity)
    plan.notes.append(
        f"RGB: each channel scaled from [0, 255] to [0, 1] (lesion colour mean+-sd per channel {colours})"
    )


# ------------------------------------------------------------------------------------------------ YAML


def _flow(value: Any) -> str:
    return (
        yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=1_000).strip().removesuffix("...").strip()
    )


def plan_yaml(plan: Plan, fingerprint_path: str) -> str:
    """The pipeline YAML, each derived value followed by its reason as a comment."""
    tree: dict[str, Any] = {}
    for key, value in plan.values.items():
        *parents, last = key.split(".")
        section = tree
        for part in parents:
            section = section.setdefault(part, {})
        section[last] = (value, plan.reasons.get(key, ""))
    lines = [
        f"# Planned by `medseg plan` from {fingerprint_path}; every derived value says its rule and the numbers.",
        *[f"# note: {note}" for note in plan.notes],
        *[f"# {comment}" for comment in plan.comments],
    ]

    def emit(section: dict[str, Any], depth: int) -> None:
        for key, item in section.items():
            if isinstance(item, dict):
                lines.append(f"{'  ' * depth}{key}:")
                emit(item, depth + 1)
                continue
            value, reason = item
            lines.append(f"{'  ' * depth}{key}: {_flow(value)}" + (f"  # {reason}" if reason else ""))

    emit(tree, 0)
    return "\n".join(lines) + "\n"


DATA_KEYS = ("name", "layout", "modalities", "labels_dir", "images_dir", "masks_dir", "csv_file", "dataset_json")


def plan_dataset(
    folder: Path | None,
    output: Path,
    name: str | None = None,
    modality: str | None = None,
    memory_gb: float = 4.0,
    max_patch_voxels: int | None = None,
    merge_labels: bool = False,
    source: PipelineConfig | None = None,
    device: str = "cpu",
    minutes: float | None = None,
) -> tuple[Path, Path, Plan]:
    """``medseg plan``: fingerprint ``folder``, write ``<name>.fingerprint.json`` and the pipeline YAML ``output``.

    ``source``: a pipeline whose ``data`` section says how to find the cases (layout, modalities, folders);
    without one the layout is detected and 2D/3D told from the files.
    """
    from medseg.config.loading import load_config
    from medseg.data.dataset import dataset_folder

    folder = Path(folder) if folder is not None else dataset_folder(data_settings(source))
    if not folder.is_dir():
        raise DataError(f"{folder}: dataset folder not found")
    base = source or guess_config(folder, "plan")
    defaults = PipelineConfig(name="plan").data
    data = {"name": base.data.name if source is not None else folder.name}
    data |= {k: getattr(base.data, k) for k in DATA_KEYS[1:] if getattr(base.data, k) != getattr(defaults, k)}
    if source is not None and (
        source.data.foreground_labels or source.data.label_mapping or source.model.out_channels == 1
    ):
        merge_labels = merge_labels or not source.data.label_mapping  # the source pipeline's classes are kept
    cases = find_cases(data_settings(base), folder)
    records = cases.records
    data["layout"] = cases.layout
    if base.data.cases:
        data["cases"] = [case.model_dump(exclude_none=True) for case in base.data.cases]
    if not records:
        raise DataError(f"{folder}: no cases found")
    fingerprint = fingerprint_images(records) if base.spatial_dims == 2 else fingerprint_volumes(records, modality)
    data = {k: v for k, v in data.items() if v not in ([], None)}
    data["dataset_dir"] = folder.name
    if source is None or source.data.dataset_dir != folder.name:  # else: found as the source finds its data
        data["root"] = str(folder.resolve().parent)
    trained = training_cases(len(records), base.data.split.val_fraction, base.data.split.test_fraction)
    plan = plan_pipeline(
        fingerprint, data, name or output.stem, memory_gb, max_patch_voxels, merge_labels, device, minutes, trained
    )
    if source is not None and source.data.foreground_labels:
        plan.set("data.foreground_labels", list(source.data.foreground_labels), "as in the source pipeline")
        plan.set("model.out_channels", 1, "binary, as in the source pipeline")
    if source is not None and source.data.labels and plan.values["model.out_channels"] == source.model.out_channels:
        named = {value: info.model_dump(exclude_none=True) for value, info in source.data.labels.items()}
        plan.set("data.labels", named, "as in the source pipeline")
    if source is not None:
        keep_hand_made(plan, source)
    fingerprint_path = output.with_name(f"{output.name.removesuffix(output.suffix)}.fingerprint.json")
    fingerprint.timing = plan.timing
    fingerprint.write(fingerprint_path)
    atomic_write_text(output, plan_yaml(plan, fingerprint_path.name))
    load_config(output)  # the plan must validate as it is
    return output, fingerprint_path, plan


HAND_MADE = ("augmentation", "loss", "optimizer", "postprocessing", "evaluation")


def keep_hand_made(plan: Plan, source: PipelineConfig) -> None:
    """Keep the source pipeline's sections that the plan does not derive (augmentation, loss, optimiser,
    post-processing, metric thresholds), where they differ from the defaults: a planned pipeline then differs from
    its source only in what the plan chooses."""
    defaults = PipelineConfig(name=source.name)
    for section in HAND_MADE:
        value = getattr(source, section).model_dump(mode="json", exclude_defaults=True)
        if value and getattr(source, section) != getattr(defaults, section):
            plan.set(section, value, "as in the source pipeline: hand-made, not derived by the plan")


def training_cases(cases: int, val_fraction: float, test_fraction: float) -> int:
    """How many of ``cases`` the split leaves for training (as :func:`medseg.data.splits.make_splits` cuts it)."""
    return max(1, cases - max(1, round(cases * test_fraction)) - max(1, round(cases * val_fraction)))


def guess_config(folder: Path, name: str) -> PipelineConfig:
    """A configuration for a folder without a pipeline: 2D RGB if ``images/`` holds 2D images, else 3D with the
    channels the first case has."""
    if not folder.is_dir():
        raise DataError(f"{folder}: dataset folder not found")
    images = folder / PipelineConfig(name=name).data.images_dir
    if images.is_dir() and any(is_image_2d(p) for p in images.iterdir()):
        return PipelineConfig(name=name)
    if _holds_2d_cases(folder, PipelineConfig(name=name)):  # labelme, COCO, CVAT, 2D nnU-Net / MSD...
        return PipelineConfig(name=name)
    guess = PipelineConfig(name=name, spatial_dims=3, model={"in_channels": 1})
    records = find_cases(data_settings(guess), folder).records
    return guess.with_values({"model.in_channels": len(records[0]["image"]) if records else 1})


def _holds_2d_cases(folder: Path, guess: PipelineConfig) -> bool:
    """Whether a 2D layout that describes its cases in a file (annotations, dataset.json) finds 2D images here."""
    from medseg.data.layouts.base import LayoutSettings
    from medseg.data.layouts.registry import choose_layout

    settings = LayoutSettings.of(guess.data, 2)
    try:
        layout, _ = choose_layout(folder, settings)
        records = layout.find(folder, settings, []).records if not layout.by_content else []
    except DataError:
        return False
    return bool(records) and is_image_2d(Path(records[0]["image"]))
