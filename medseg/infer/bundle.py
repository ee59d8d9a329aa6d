"""``medseg export --format bundle``: a trained model as a MONAI bundle that runs without medseg.

The bundle is MONAI's own layout: ``configs/metadata.json`` (the fields MONAI's bundle specification requires, plus the
label names), ``configs/inference.json`` (medseg's inference written in MONAI components: reader, orientation,
spacing, intensity, crop or resize; the sliding-window inferer; activation, ``Invertd`` back onto the input's grid,
discretisation, the post-processing chosen at training time and ``SaveImaged``), ``models/model.pt`` (the weights),
``models/model.ts`` (TorchScript with metadata.json and inference.json embedded, as ``monai.bundle ckpt_export``
writes it; what MONAI Deploy reads) and ``docs/README.md``. ``python -m monai.bundle run`` runs it.

A step medseg takes that MONAI has no component for is left out of inference.json, with one line saying which
(:attr:`BundleParts.left_out`); the rest is written.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, field
from datetime import date
from importlib import metadata as package_metadata
from pathlib import Path
from typing import Any

import torch

from medseg.core.atomic import atomic_write_text
from medseg.core.errors import ModelError
from medseg.core.layout import ENSEMBLE_FILE, MODEL_DIR
from medseg.imageio.formats import IMAGE_2D_SUFFIXES, NIFTI_SUFFIXES, OUTPUT_FORMATS
from medseg.infer.settings import InferenceSettings
from medseg.version import __version__

log = logging.getLogger(__name__)

BUNDLE_FORMAT = "bundle"
SCHEMA_URL = "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20220324.json"
#: medseg network name -> the MONAI class that builds it (others travel as TorchScript only)
MONAI_NETWORKS = {
    "unet": "UNet",
    "attention_unet": "AttentionUnet",
    "dynunet": "DynUNet",
    "segresnet": "SegResNet",
    "swin_unetr": "SwinUNETR",
    "unetr": "UNETR",
    "flexible_unet": "FlexibleUNet",
}
#: what running a bundle needs beside MONAI and PyTorch (metadata.json's optional_packages_version)
RUNTIME_PACKAGES = ("nibabel", "pillow", "scipy", "scikit-image", "pytorch-ignite", "fire")
#: the input files the default datalist picks up in the dataset folder
DATALIST_PATTERNS = {2: tuple(f"*{s}" for s in IMAGE_2D_SUFFIXES), 3: tuple(f"*{s}" for s in NIFTI_SUFFIXES)}


@dataclass
class BundleExport:
    """A written bundle: its folder, how closely models/model.ts reproduces the network on random inputs of the
    working shape, and the one-line notes on what inference.json leaves out."""

    path: Path
    cases: int
    max_abs_logit_difference: float
    max_abs_probability_difference: float
    mask_dice: float
    left_out: list[str]


@dataclass
class BundleParts:
    """The two JSON documents of a bundle and the one-line notes on what inference.json leaves out."""

    metadata: dict[str, Any]
    inference: dict[str, Any]
    left_out: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------ inference.json


def _intensity(settings: InferenceSettings, left_out: list[str]) -> list[dict[str, Any]]:
    """medseg's intensity normalisation as MONAI transforms (one kind for every channel), or a note."""
    intensity = settings.transforms.preprocessing.intensity
    kinds = set(intensity.channel_kinds(settings.in_channels))
    if settings.spatial_dims == 2 and not (intensity.channels or intensity.kind in ("zscore", "rescale")):
        return [{"_target_": "ScaleIntensityRanged", "keys": "image", **_range((0.0, 255.0), (0.0, 1.0))}]
    if len(kinds) > 1:
        left_out.append(
            f"intensity normalisation: preprocessing.intensity.channels mixes kinds "
            f"({', '.join(sorted(kinds))}) and MONAI's transforms normalise every channel alike"
        )
        return []
    kind = kinds.pop()
    if kind == "ct":
        return [{"_target_": "ScaleIntensityRanged", "keys": "image", **_range(intensity.window, intensity.scaled_to)}]
    if kind in ("mri", "zscore"):  # z-score per channel: MRI over non-zero voxels, zscore over the whole image
        return [{"_target_": "NormalizeIntensityd", "keys": "image", "nonzero": kind == "mri", "channel_wise": True}]
    if kind == "rescale":
        return [{"_target_": "ScaleIntensityd", "keys": "image", "minv": 0.0, "maxv": 1.0, "channel_wise": True}]
    return []  # none


def _range(window: tuple[float, float], target: tuple[float, float]) -> dict[str, Any]:
    return {"a_min": window[0], "a_max": window[1], "b_min": target[0], "b_max": target[1], "clip": True}


def _crop_select(settings: InferenceSettings) -> dict[str, Any]:
    """What CropForegroundd keeps: above the bottom of a CT window, else the non-zero voxels."""
    intensity = settings.transforms.preprocessing.intensity
    if intensity.kind == "ct" and not intensity.channels:
        return {"_target_": "torch.gt", "_mode_": "callable", "other": intensity.scaled_to[0]}
    return {"_target_": "torch.Tensor.bool", "_mode_": "callable"}


def preprocessing(settings: InferenceSettings, left_out: list[str]) -> list[dict[str, Any]]:
    """medseg's inference preprocessing (:mod:`medseg.transforms`) as MONAI dictionary transforms."""
    pre = settings.transforms.preprocessing
    if settings.spatial_dims == 2:
        reader: Any = "PILReader"
        if settings.in_channels == 3:  # an opaque RGBA image as RGB, as medseg reads it
            converter = {"_target_": "PIL.Image.Image.convert", "_mode_": "callable", "mode": "RGB"}
            reader = {"_target_": "PILReader", "converter": converter}
        transforms = [
            {"_target_": "LoadImaged", "keys": "image", "reader": reader, "image_only": True},
            {"_target_": "EnsureChannelFirstd", "keys": "image"},
            *_intensity(settings, left_out),
        ]
        if pre.color_constancy != "none":
            left_out.append(f"preprocessing.color_constancy {pre.color_constancy}: MONAI has no such transform")
        height, width = pre.spatial_size  # MONAI's PIL reader loads (width, height) arrays
        resize = {"keys": "image", "spatial_size": [width, height], "mode": "bilinear", "anti_aliasing": True}
        return [*transforms, {"_target_": "Resized", **resize}]
    transforms = [
        {"_target_": "LoadImaged", "keys": "image", "image_only": True, "ensure_channel_first": True},
        {"_target_": "Orientationd", "keys": "image", "axcodes": pre.orientation},
    ]
    if isinstance(pre.spacing, tuple):
        transforms.append({"_target_": "Spacingd", "keys": "image", "pixdim": list(pre.spacing), "mode": "bilinear"})
    transforms.extend(_intensity(settings, left_out))
    if pre.crop_foreground:
        crop = {"keys": "image", "source_key": "image", "margin": 4, "allow_smaller": True}
        transforms.append({"_target_": "CropForegroundd", **crop, "select_fn": _crop_select(settings)})
    return transforms


def _steps(settings: InferenceSettings, steps: list[str], left_out: list[str]) -> list[dict[str, Any]]:
    """The post-processing chosen at training time as MONAI transforms on the label map."""
    labels, dims = settings.labels, settings.spatial_dims
    if labels.multilabel and steps:
        left_out.append(f"post-processing ({', '.join(steps)}): medseg runs it on the painted label map of regions")
        return []
    values = list(range(1, labels.class_count))
    transforms = []
    for name in steps:
        if name == "fill_holes":  # background connected face to face, as scipy's binary_fill_holes
            transforms.append({"_target_": "FillHolesd", "keys": "pred", "applied_labels": values, "connectivity": 1})
        elif name == "largest_component":
            component = {"applied_labels": values, "independent": True, "connectivity": dims}
            transforms.append({"_target_": "KeepLargestConnectedComponentd", "keys": "pred", **component})
        elif name == "remove_small_objects" and len(values) == 1:
            small = {"min_size": settings.postprocessing.min_size, "connectivity": dims, "independent_channels": True}
            transforms.append({"_target_": "RemoveSmallObjectsd", "keys": "pred", **small})
        elif name == "remove_small_objects":
            left_out.append(
                "post-processing step remove_small_objects: MONAI's counts a label map of several"
                " classes as one object per class"
            )
        else:
            left_out.append(f"post-processing step {name}: MONAI has no {name} transform")
    return transforms


def postprocessing(settings: InferenceSettings, steps: list[str], left_out: list[str]) -> list[dict[str, Any]]:
    """Activation, back onto the input's grid, discretisation, clean-up, writer."""
    labels = settings.labels
    sigmoid = labels.out_channels == 1 or labels.multilabel
    activation = {"sigmoid": True} if sigmoid else {"softmax": True}
    discrete = {"threshold": labels.threshold} if sigmoid else {"argmax": True}
    if labels.multilabel:
        left_out.append("region painting (data.region_order): the bundle writes one channel per region")
    writer: dict[str, Any] = {"output_ext": OUTPUT_FORMATS["nifti"], "output_dtype": "uint8", "resample": False}
    if settings.spatial_dims == 2:  # a binary 2D mask as 0/255, as medseg writes it
        writer = {"output_ext": ".png", "writer": "PILWriter", "output_dtype": "uint8", "resample": False}
        writer |= {"scale": 255} if labels.class_count == 2 and not labels.multilabel else {}
    return [
        {"_target_": "Activationsd", "keys": "pred", **activation},
        {
            "_target_": "Invertd",
            "keys": "pred",
            "transform": "@preprocessing",
            "orig_keys": "image",
            "nearest_interp": False,
            "to_tensor": True,
        },
        {"_target_": "AsDiscreted", "keys": "pred", **discrete},
        *_steps(settings, steps, left_out),
        {
            "_target_": "SaveImaged",
            "keys": "pred",
            "output_dir": "@output_dir",
            "output_postfix": "seg",
            "separate_folder": False,
            **writer,
        },
    ]


def _datalist(settings: InferenceSettings) -> str:
    """The default inputs: the dataset folder's images, or its nnU-Net-named channels (case_0000, case_0001...)."""
    if settings.spatial_dims == 3 and settings.in_channels > 1:
        channels = settings.in_channels
        return (
            "$[[f.replace('_0000.nii', '_%04d.nii' % c) for c in range(" + str(channels) + ")] for f in "
            "sorted(glob.glob(os.path.join(@dataset_dir, '*_0000.nii*')))]"
        )
    patterns = ", ".join(repr(p) for p in DATALIST_PATTERNS[settings.spatial_dims])
    return f"$sorted(f for p in ({patterns},) for f in glob.glob(os.path.join(@dataset_dir, p)))"


def network_definition(spec: dict[str, Any]) -> dict[str, Any] | None:
    """``network_def``: the MONAI class and arguments of a checkpoint's network (None: not a MONAI network)."""
    from medseg.models.registry import network_arguments

    target = MONAI_NETWORKS.get(spec["name"])
    if target is None:
        return None
    dims, channels = spec["spatial_dims"], (spec["in_channels"], spec["out_channels"])
    arguments = network_arguments(spec["name"], dims, *channels, dict(spec.get("args") or {}))
    network = {"_target_": target, "spatial_dims": dims, "in_channels": channels[0], "out_channels": channels[1]}
    return json.loads(json.dumps({**network, **arguments}))  # tuples as lists


def inference_config(
    settings: InferenceSettings, steps: list[str], network_def: dict[str, Any] | None, left_out: list[str]
) -> dict[str, Any]:
    """``configs/inference.json``: MONAI's SupervisedEvaluator over the dataset folder's images."""
    if settings.inference.tta:
        left_out.append("mirror test-time augmentation (inference.tta): the bundle runs each image once")
    inference = settings.inference
    if settings.spatial_dims == 2:
        inferer: dict[str, Any] = {"_target_": "SimpleInferer"}
    else:
        window = {"roi_size": list(settings.working_shape), "sw_batch_size": inference.sw_batch_size}
        inferer = {"_target_": "SlidingWindowInferer", **window, "overlap": inference.overlap}
        inferer["mode"] = inference.blend_mode
    handlers: list[dict[str, Any]] = [{"_target_": "StatsHandler", "iteration_log": False}]
    if network_def is not None:
        weights = {"load_path": "$@bundle_root + '/models/model.pt'", "load_dict": {"model": "@network"}}
        handlers.insert(0, {"_target_": "CheckpointLoader", **weights, "map_location": "@device"})
        network = "$@network_def.to(@device)"
    else:  # not a MONAI network: the TorchScript file is the network
        network = "$torch.jit.load(@bundle_root + '/models/model.ts', map_location=@device)"
    config: dict[str, Any] = {
        "imports": ["$import glob", "$import os"],
        "bundle_root": ".",
        "output_dir": "$@bundle_root + '/eval'",
        "dataset_dir": "$@bundle_root + '/data'",
        "datalist": _datalist(settings),
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
    }
    if network_def is not None:
        config["network_def"] = network_def
    config |= {
        "network": network,
        "preprocessing": {"_target_": "Compose", "transforms": preprocessing(settings, left_out)},
        "dataset": {"_target_": "Dataset", "data": "$[{'image': i} for i in @datalist]", "transform": "@preprocessing"},
        "dataloader": {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": 1, "shuffle": False},
        "inferer": inferer,
        "postprocessing": {"_target_": "Compose", "transforms": postprocessing(settings, steps, left_out)},
        "handlers": handlers,
        "evaluator": {
            "_target_": "SupervisedEvaluator",
            "device": "@device",
            "val_data_loader": "@dataloader",
            "network": "@network",
            "inferer": "@inferer",
            "postprocessing": "@postprocessing",
            "val_handlers": "@handlers",
            "amp": False,
        },
        "run": ["$@evaluator.run()"],
    }
    return config


# ------------------------------------------------------------------------------------------------- metadata.json


def _versions(names: tuple[str, ...]) -> dict[str, str]:
    found = {}
    for name in names:
        try:
            found[name] = package_metadata.version(name)
        except package_metadata.PackageNotFoundError:
            continue
    return found


def _channel_def(settings: InferenceSettings) -> dict[str, str]:
    if settings.modalities:
        return {str(i): name for i, name in enumerate(settings.modalities)}
    if settings.spatial_dims == 2 and settings.in_channels == 3:
        return {"0": "red", "1": "green", "2": "blue"}
    return {str(i): "image" for i in range(settings.in_channels)}


def _run_name(checkpoint: Path) -> str:
    """The run a checkpoint belongs to (``<run>/model/best.pt``), else the checkpoint's own name."""
    return f"run {checkpoint.parent.parent.name}" if checkpoint.parent.name == MODEL_DIR else checkpoint.name


def _input_range(settings: InferenceSettings) -> list[float]:
    """The network input's value range after preprocessing ([] where z-scored: unbounded)."""
    intensity = settings.transforms.preprocessing.intensity
    kinds = set(intensity.channel_kinds(settings.in_channels))
    if settings.spatial_dims == 2 and not (intensity.channels or intensity.kind in ("zscore", "rescale")):
        return [0.0, 1.0]
    if kinds == {"ct"}:
        return list(intensity.scaled_to)
    return [0.0, 1.0] if kinds == {"rescale"} else []


def bundle_metadata(settings: InferenceSettings, state: dict[str, Any], source: Path) -> dict[str, Any]:
    """``configs/metadata.json``: MONAI's required fields, the network's tensors and the label names."""
    import monai
    import numpy

    config, labels = state["config"], settings.labels
    intensity = settings.transforms.preprocessing.intensity
    ct = settings.spatial_dims == 3 and intensity.kind == "ct"
    modality = "n/a" if settings.spatial_dims == 2 else ("CT" if ct else "MR")
    patch = settings.spatial_dims == 3
    shape = list(settings.working_shape)
    value_range = _input_range(settings)
    label_names = {"0": "background", **{str(label.value): label.name for label in labels.output_labels()}}
    name = config.get("name", "medseg")
    return {
        "schema": SCHEMA_URL,
        "version": "0.1.0",
        "changelog": {"0.1.0": f"medseg {__version__} export of {_run_name(source)} on {date.today().isoformat()}"},
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": numpy.__version__,
        "optional_packages_version": _versions(RUNTIME_PACKAGES),  # the specification's name
        "required_packages_version": _versions(RUNTIME_PACKAGES),  # what MONAI 1.6 reads it as
        "name": name,
        "task": config.get("description") or f"{settings.spatial_dims}D segmentation ({name})",
        "description": f"{state['network']['name']} trained with medseg {__version__} (pipeline {name}); "
        f"{settings.in_channels}-channel {settings.spatial_dims}D input, labels: "
        + ", ".join(label.name for label in labels.output_labels()),
        "authors": "medseg user",
        "copyright": "Copyright (c) the authors of the trained model",
        "intended_use": "Research use only; not for diagnostic purposes",
        "eval_metrics": {"val_dice": state["val_dice"]} if state.get("val_dice") is not None else {},
        "labels": label_names,
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "format": "hounsfield" if ct else "magnitude",
                    "modality": modality,
                    "num_channels": settings.in_channels,
                    "spatial_shape": shape,
                    "dtype": "float32",
                    "value_range": value_range,
                    "is_patch_data": patch,
                    "channel_def": _channel_def(settings),
                }
            },
            "outputs": {
                "pred": {
                    "type": "image",
                    "format": "classes" if labels.out_channels == 1 or labels.multilabel else "labels",
                    "num_channels": labels.out_channels,
                    "spatial_shape": shape,
                    "dtype": "float32",
                    "value_range": [],
                    "is_patch_data": patch,
                    "channel_def": {str(i): name for i, name in enumerate(labels.channel_names())},
                }
            },
        },
    }


# ------------------------------------------------------------------------------------------------------ export


def bundle_parts(settings: InferenceSettings, steps: list[str], state: dict[str, Any], source: Path) -> BundleParts:
    """metadata.json and inference.json of a trained model, with what inference.json leaves out."""
    left_out: list[str] = []
    inference = inference_config(settings, steps, network_definition(state["network"]), left_out)
    return BundleParts(bundle_metadata(settings, state, source), inference, left_out)


def _readme(parts: BundleParts, settings: InferenceSettings) -> str:
    meta = parts.metadata
    inputs = "PNG / JPEG images" if settings.spatial_dims == 2 else "NIfTI scans (NRRD, MHA, DICOM: with `itk`)"
    lines = [
        f"# {meta['name']}",
        "",
        meta["description"] + ".",
        "",
        f"Exported by medseg {__version__}; runs with MONAI {meta['monai_version']}, PyTorch, pytorch-ignite and fire"
        " (`pip install monai pytorch-ignite fire nibabel pillow scikit-image`), no medseg needed.",
        "",
        "```bash",
        "python -m monai.bundle run --config_file configs/inference.json --bundle_root . \\",
        "    --dataset_dir IMAGES --output_dir MASKS",
        "```",
        "",
        f"Inputs: {inputs} in `dataset_dir`"
        + (
            f" ({settings.in_channels} channels: `case_0000.nii.gz`, `case_0001.nii.gz`, ...)"
            if settings.in_channels > 1 and settings.spatial_dims == 3
            else ""
        )
        + "; or `--datalist` with a JSON list of files. Masks are written as `<name>_seg` on the input's own grid.",
        "",
        "Labels: " + ", ".join(f"{value} {name}" for value, name in meta["labels"].items()) + ".",
        "",
        "`models/model.ts` holds the network as TorchScript with `metadata.json` and `inference.json` embedded.",
    ]
    if parts.left_out:
        lines += ["", "Left out of `inference.json` (medseg does these; MONAI has no component for them):", ""]
        lines += [f"- {note}" for note in parts.left_out]
    return "\n".join(lines) + "\n"


def _write_torchscript(network: torch.nn.Module, folder: Path, parts: BundleParts, example: torch.Tensor) -> None:
    """models/model.ts: MONAI's ``ckpt_export`` where inference.json defines ``network_def``, else the same
    TorchScript file (metadata.json as its metadata, inference.json as an extra file) from a trace."""
    configs, models = folder / "configs", folder / "models"
    target = models / "model.ts"
    if "network_def" in parts.inference:
        from monai.bundle import ckpt_export

        files = {"meta_file": str(configs / "metadata.json"), "config_file": str(configs / "inference.json")}
        ckpt_file, root = str(models / "model.pt"), str(folder)
        try:
            ckpt_export("network_def", str(target), ckpt_file, **files, bundle_root=root)
        except Exception:  # a network TorchScript cannot script (MONAI's transformers) is traced instead
            ckpt_export(
                "network_def",
                str(target),
                ckpt_file,
                **files,
                bundle_root=root,
                use_trace=True,
                input_shape=list(example.shape),
            )
        return
    from monai.data import save_net_with_metadata
    from monai.networks import convert_to_torchscript

    scripted = convert_to_torchscript(network, use_trace=True, inputs=[example])
    extra = {"inference.json": json.dumps(parts.inference).encode()}
    save_net_with_metadata(
        scripted, str(target), include_config_vals=False, meta_values=parts.metadata, more_extra_files=extra
    )


def _torchscript_parity(network: torch.nn.Module, path: Path, settings: InferenceSettings) -> tuple[float, ...]:
    """(cases, max |logit difference|, max |probability difference|, min mask Dice) between the TorchScript file and
    the network on standard-normal inputs of the working shape."""
    from medseg.evaluation.metrics import dice_score
    from medseg.infer.backends import random_inputs
    from medseg.infer.inferers import activate

    scripted = torch.jit.load(str(path), map_location="cpu")
    inputs = random_inputs(settings.in_channels, settings.working_shape)
    logit, probability, dice = 0.0, 0.0, 1.0
    with torch.inference_mode():
        for batch in inputs:
            ours, theirs = network(batch).float(), scripted(batch).float()
            ours_p = activate(ours, settings.labels.multilabel)[0].numpy()
            theirs_p = activate(theirs, settings.labels.multilabel)[0].numpy()
            logit = max(logit, float((ours - theirs).abs().max()))
            probability = max(probability, float(abs(ours_p - theirs_p).max()))
            labels = settings.labels
            dice = min(dice, dice_score(labels.discretise(ours_p), labels.discretise(theirs_p)))
    return len(inputs), logit, probability, dice


def _target_folder(output: Path) -> Path:
    """The bundle folder to write: new, empty, or an earlier bundle (replaced)."""
    if output.exists() and (not output.is_dir() or (any(output.iterdir()) and not (output / "configs").is_dir())):
        raise ModelError(f"{output}: exists and is not a MONAI bundle; give a new or empty folder with -o")
    return output


def export_bundle(checkpoint: Path, output: Path | None, default_folder: Path, tolerance: float) -> BundleExport:
    """Write the bundle of ``checkpoint`` (a network's .pt) into ``output`` (default: ``default_folder/bundle``).

    Raises ModelError, after writing nothing, for a classical baseline, a fold ensemble or a TorchScript file whose
    logits differ from the network's by more than ``tolerance``.
    """
    from medseg.infer.backends import example_input
    from medseg.infer.predictor import Predictor
    from medseg.models.checkpoint import load_checkpoint
    from medseg.models.classical import ClassicalSegmenter

    if checkpoint.name == ENSEMBLE_FILE:
        raise ModelError(
            f"{checkpoint}: a cross-validated run; a MONAI bundle holds one network: export one fold's run"
        )
    state = load_checkpoint(checkpoint)
    reference = Predictor.from_model(checkpoint, backend="torch", device="cpu")
    if isinstance(reference.network, ClassicalSegmenter):
        raise ModelError(
            f"{checkpoint}: a classical baseline ({state['network']['name']}) has no network for a MONAI bundle"
        )
    settings = reference.settings
    parts = bundle_parts(settings, reference.steps, state, checkpoint)
    target = _target_folder(Path(output) if output is not None else default_folder / BUNDLE_FORMAT)
    staged = target.with_name(f".{target.name}.writing")
    shutil.rmtree(staged, ignore_errors=True)
    try:
        for sub in ("configs", "models", "docs"):
            (staged / sub).mkdir(parents=True)
        atomic_write_text(staged / "configs" / "metadata.json", json.dumps(parts.metadata, indent=2))
        atomic_write_text(staged / "configs" / "inference.json", json.dumps(parts.inference, indent=2))
        atomic_write_text(staged / "docs" / "README.md", _readme(parts, settings))
        network = reference.network.eval()
        torch.save(network.state_dict(), staged / "models" / "model.pt")
        example = example_input(settings.in_channels, settings.working_shape)
        _write_torchscript(network, staged, parts, example)
        cases, difference, probability, dice = _torchscript_parity(network, staged / "models" / "model.ts", settings)
        if difference > tolerance:
            raise ModelError(
                f"{target}: models/model.ts does not reproduce the network (max |logit difference| {difference:.2e});"
                " nothing written"
            )
        shutil.rmtree(target, ignore_errors=True)
        staged.rename(target)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    log.info("Exported %s -> %s (MONAI bundle; %d step(s) left out)", checkpoint, target, len(parts.left_out))
    return BundleExport(target, int(cases), difference, probability, dice, parts.left_out)
