"""A predictor built once from a trained model and reused for many images or scans.

input -> the validation preprocessing -> network (whole image in 2D, Gaussian-blended sliding window in
3D; optional mirror TTA) -> sigmoid/softmax -> ``Invertd`` back to the input's own grid -> threshold or
argmax -> the post-processing chosen at training time.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from medseg.checkpoint import load_checkpoint, network_from_checkpoint, resolve_checkpoint
from medseg.config import PipelineConfig
from medseg.errors import DataError, MedsegError, ModelError, user_error_in
from medseg.postprocessing import apply_steps, enabled_steps

log = logging.getLogger(__name__)

POSTPROCESSING_FILE = "postprocessing.json"
MODEL_URI_SCHEMES = ("runs:/", "models:/", "mlflow-artifacts:/")


def postprocessing_steps(cfg: PipelineConfig, model_dir: Path) -> list[str]:
    """The steps to replay: chosen on validation (``auto``), as configured (``on``), or none (``off``)."""
    mode = cfg.postprocessing.mode
    if mode == "off":
        return []
    if mode == "on":
        return enabled_steps(cfg.postprocessing)
    chosen = model_dir / POSTPROCESSING_FILE
    if chosen.is_file():
        return list(json.loads(chosen.read_text(encoding="utf-8"))["steps"])
    log.warning("%s: no post-processing choice saved with the model; applying none", chosen)
    return []


def inference_backend(cfg: PipelineConfig) -> str:
    """``torch`` or ``onnxruntime`` for this pipeline (``auto``: ONNX Runtime for 3D sliding windows)."""
    backend = cfg.inference.backend
    return ("onnxruntime" if cfg.spatial_dims == 3 else "torch") if backend == "auto" else backend


def runtime_network(network: nn.Module, cfg: PipelineConfig) -> nn.Module:
    """The network as it will run: ONNX Runtime when the backend says so (PyTorch if the export fails)."""
    from medseg.export import OnnxNetwork, session_network

    if inference_backend(cfg) != "onnxruntime" or isinstance(network, OnnxNetwork | torch.jit.ScriptModule):
        return network
    try:
        return session_network(network.eval(), cfg)
    except Exception as exc:  # any exporter failure: PyTorch still gives the same result, only slower
        log.warning("ONNX Runtime backend unavailable (%s); running the network in PyTorch", str(exc)[:200])
        return network


def activate(logits: torch.Tensor) -> torch.Tensor:
    """Sigmoid for a 1-channel (binary) output, softmax over classes otherwise."""
    return torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, dim=1)


def build_inferer(cfg: PipelineConfig):
    """Whole-image inference in 2D; sliding window with Gaussian blending in 3D."""
    from monai.inferers import SimpleInferer, SlidingWindowInferer

    if cfg.spatial_dims == 2:
        return SimpleInferer()
    inf = cfg.inference
    return SlidingWindowInferer(
        roi_size=inf.roi_size or cfg.preprocessing.patch_size,
        sw_batch_size=inf.sw_batch_size,
        overlap=inf.overlap,
        mode=inf.blend_mode,
    )


def mirrored_probabilities(network: nn.Module, batch: torch.Tensor, tta: bool, inferer=None) -> torch.Tensor:
    """Class probabilities, averaged over flips of every spatial axis when ``tta`` is on."""
    spatial_axes = list(range(2, batch.ndim))
    flips: list[list[int]] = [[]]
    if tta:
        flips += [[axis] for axis in spatial_axes] + ([spatial_axes] if len(spatial_axes) > 1 else [])
    total: torch.Tensor | None = None
    for axes in flips:
        flipped = batch.flip(axes) if axes else batch
        logits = (inferer(flipped, network) if inferer is not None else network(flipped)).float()
        probs = activate(logits.flip(axes) if axes else logits)
        total = probs if total is None else total.add_(probs)
    return total / len(flips)


@dataclass
class Predictor:
    """Segments 2D images or 3D volumes with a trained network, in the input's own geometry.

    2D results are (H, W) arrays; 3D results are (X, Y, Z) arrays on the scan's voxel grid, as loaded.
    """

    network: nn.Module
    config: PipelineConfig
    steps: list[str] = field(default_factory=list)
    tta: bool = False

    def __post_init__(self) -> None:
        from monai.transforms import Invertd

        from medseg.data.transforms import inference_transforms

        self.network.eval()
        self.runtime = runtime_network(self.network, self.config)  # what runs: PyTorch or ONNX Runtime
        self.threshold = self.config.evaluation.threshold
        self.preprocess = inference_transforms(self.config)
        self.inferer = build_inferer(self.config)
        # 2D: MONAI's Invertd; 3D: medseg.resampling (same result, a fraction of Invertd's memory)
        self.invert = (
            Invertd(keys="pred", transform=self.preprocess, orig_keys="image", nearest_interp=False)
            if self.config.spatial_dims == 2
            else None
        )

    @classmethod
    def from_model(
        cls, model: Path | str, tta: bool | None = None, steps: list[str] | None = None, backend: str | None = None
    ) -> Predictor:
        """Build from a run folder, its ``model/`` folder, a checkpoint, an MLflow model URI, or a file
        written by ``medseg export`` (``.onnx`` runs on ONNX Runtime, ``.ts`` on TorchScript).

        ``steps`` overrides the post-processing saved with the model (used while choosing it); ``backend``
        overrides ``inference.backend``.
        """
        from medseg.export import export_format, read_exported

        checkpoint = resolve_model(model)
        if export_format(checkpoint) is not None:
            network, metadata = read_exported(checkpoint)
            config = _validated_config(metadata.get("config"), checkpoint, backend)
            steps = list(metadata.get("postprocessing", [])) if steps is None else steps  # resolved at export
            return cls(network, config, steps, config.inference.tta if tta is None else tta)
        state = load_checkpoint(checkpoint)
        config = _validated_config(state.get("config"), checkpoint, backend)
        network = network_from_checkpoint(state, checkpoint)
        steps = postprocessing_steps(config, checkpoint.parent) if steps is None else steps
        return cls(network, config, steps, config.inference.tta if tta is None else tta)

    def probabilities(self, image: Path | str | list) -> np.ndarray:
        """Class probabilities (C, *spatial) on the input's own grid (2D: (C, H, W))."""
        from monai.data import MetaTensor

        source = [str(p) for p in image] if isinstance(image, (list, tuple)) else str(image)
        name = source[0] if isinstance(source, list) else source
        check_input([Path(p) for p in (source if isinstance(source, list) else [source])], self.config)
        try:
            data = self.preprocess({"image": source}, end=1)  # load only: check the voxels as read
            if check_voxels(data["image"], source):  # uniform: nothing to segment, background everywhere
                shape = [int(n) for n in data["image"].meta["spatial_shape"]]
                probs = np.zeros((self.config.model.out_channels, *shape[:: -1 if len(shape) == 2 else 1]), np.float32)
                probs[0] = 0.0 if probs.shape[0] == 1 else 1.0  # (2D: the PIL reader's (W, H) -> (H, W))
                return probs
            data = self.preprocess(data, start=1)
        except MedsegError:
            raise
        except Exception as exc:  # MONAI wraps reader errors in RuntimeError chains
            wrapped = user_error_in(exc)
            if wrapped is not None:
                raise wrapped from None
            reason = _root_cause(exc).replace(f" for file: {name}", "").replace(name, "").rstrip(". ")
            raise MedsegError(f"{name}: cannot read image ({reason})") from None
        batch = data["image"].as_tensor()[None]
        channels, dims = self.config.model.in_channels, self.config.spatial_dims
        if batch.ndim != dims + 2 or batch.shape[1] != channels:
            raise DataError(
                f"{name}: image of shape {'x'.join(map(str, batch.shape[1:]))} (channels first) after preprocessing, "
                f"but the {dims}D model expects {channels} channel(s)"
            )
        # keep only the metadata of the preprocessed image: Invertd needs its history, not its voxels
        data["image"] = MetaTensor(
            torch.empty(0), meta=data["image"].meta, applied_operations=data["image"].applied_operations
        )
        with torch.inference_mode():
            probs = mirrored_probabilities(self.runtime, batch, self.tta, self.inferer)
        del batch
        if self.config.spatial_dims == 3:
            from medseg.resampling import resample_to_grid

            meta = data["image"].meta
            shape = tuple(int(n) for n in meta["spatial_shape"])
            crop = next((op for op in data["image"].applied_operations if op["class"] == "CropForeground"), None)
            cropped = tuple(bool(n) for n in crop["extra_info"]["cropped"]) if crop else (False,) * 6
            probs = resample_to_grid(
                probs[0], _numpy(meta["affine"]), _numpy(meta["original_affine"]), shape, cropped_sides=cropped
            )
            return probs.numpy()
        data["pred"] = MetaTensor(probs[0])  # a MetaTensor, or Invertd silently leaves it untouched
        inverted = np.asarray(self.invert(data)["pred"], dtype=np.float32)
        return inverted.transpose(0, 2, 1)  # the PIL reader is (W, H); images are (H, W)

    def probability(self, image_path: Path) -> np.ndarray:
        """Foreground probability of a binary model, shape of the input."""
        return self.probabilities(image_path)[0]

    def discretise(self, probs: np.ndarray) -> np.ndarray:
        """Probabilities -> uint8 label map (threshold for binary, argmax for multi-class)."""
        if probs.shape[0] == 1:
            return (probs[0] > self.threshold).astype(np.uint8)
        return probs.argmax(axis=0).astype(np.uint8)

    def segment(self, image: Path | str | list) -> tuple[np.ndarray, np.ndarray]:
        """Label maps before and after post-processing (uint8, the input's shape)."""
        raw = self.discretise(self.probabilities(image))
        return raw, apply_steps(raw, self.steps, self.config.postprocessing)


def resolve_model(model: Path | str) -> Path:
    """The model file behind a run folder, ``model/`` folder, file path or MLflow model URI."""
    if isinstance(model, str) and model.startswith(MODEL_URI_SCHEMES):
        from medseg.tracking import download_model

        return download_model(model)
    return resolve_checkpoint(Path(model))


def _validated_config(raw: object, source: Path, backend: str | None = None) -> PipelineConfig:
    """The pipeline configuration saved with a model (``backend`` replacing its inference backend)."""
    try:
        config = PipelineConfig.model_validate(raw)
        if backend is not None:
            config = config.model_copy(update={"inference": config.inference.model_copy(update={"backend": backend})})
        return config
    except ValueError as exc:
        first = str(exc).splitlines()
        detail = " ".join(line.strip() for line in first[1:3]) if len(first) > 1 else str(exc)
        raise ModelError(f"{source}: the configuration stored with the model is invalid ({detail})") from None


def _check_openable(path: Path) -> None:
    """DataError for a path that cannot be opened: missing, a broken or looping symlink, no permission."""
    if path.is_dir():
        return  # a DICOM series folder
    try:
        with open(path, "rb"):
            pass
    except FileNotFoundError:
        raise DataError(f"{path}: {'broken symbolic link' if path.is_symlink() else 'file not found'}") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot open ({exc.strerror or exc.__class__.__name__})") from None


def _check_volume_headers(paths: list[Path], cfg: PipelineConfig) -> None:
    import SimpleITK as sitk

    from medseg.data.volumes import read_volume_header
    from medseg.imageio.readers import (
        IMAGE_2D_SUFFIXES,
        SUPPORTED_FORMATS,
        dicom_series_files,
        error_summary,
        has_suffix,
    )

    limit, channels = cfg.inference.max_voxels, 0
    for path in paths:
        if has_suffix(path, IMAGE_2D_SUFFIXES):
            raise DataError(f"{path}: a 2D image, but the model is 3D (it reads {SUPPORTED_FORMATS.split(', 2D')[0]})")
        if path.is_dir():
            files = dicom_series_files(path)
            reader = sitk.ImageFileReader()
            reader.SetFileName(files[0])
            try:
                reader.ReadImageInformation()
            except RuntimeError as exc:
                raise DataError(f"{files[0]}: cannot read the DICOM header ({error_summary(exc)})") from None
            shape: tuple[int, ...] = (*reader.GetSize()[:2], len(files))
            count = reader.GetNumberOfComponents()
        else:
            header = read_volume_header(path)  # DataError for an unreadable header or fewer than 3 dimensions
            shape, count = header.spatial_shape, header.channels
        voxels = int(np.prod(shape, dtype=np.int64)) * count
        if voxels > limit:
            raise DataError(
                f"{path}: {'x'.join(map(str, shape))} x {count} channel(s) = {voxels:,} voxels, "
                f"above inference.max_voxels={limit:,}"
            )
        channels += count
    if channels != cfg.model.in_channels:
        raise DataError(
            f"{paths[0]}: the scan holds {channels} channel(s) but the model expects {cfg.model.in_channels}"
        )


def _check_image_header(path: Path, cfg: PipelineConfig) -> None:
    from PIL import Image, UnidentifiedImageError

    from medseg.data.datalist import IMAGE_EXTENSIONS
    from medseg.data.volumes import VOLUME_SUFFIXES

    if path.is_dir() or path.name.lower().endswith(VOLUME_SUFFIXES):
        raise DataError(f"{path}: a 3D scan, but the model is 2D (it reads {', '.join(IMAGE_EXTENSIONS)} images)")
    limit, channels = cfg.inference.max_voxels, cfg.model.in_channels
    try:
        with Image.open(path) as image:
            mode, bands, frames = image.mode, len(image.getbands()), getattr(image, "n_frames", 1)
            if image.width * image.height > limit:
                raise DataError(
                    f"{path}: {image.width}x{image.height} = {image.width * image.height:,} pixels, "
                    f"above inference.max_voxels={limit:,}"
                )
            image.load()
    except MedsegError:
        raise
    except UnidentifiedImageError:
        raise DataError(f"{path}: not a readable image") from None
    except Exception as exc:  # PIL: OSError, SyntaxError, ValueError, struct.error, DecompressionBombError
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise DataError(f"{path}: corrupt or truncated image ({detail})") from None
    if frames > 1:
        raise DataError(f"{path}: {frames} frames (a 3D stack), but the model is 2D")
    expected = {1: ("L",), 3: ("RGB",)}.get(channels, ())
    if (expected and mode not in expected) or (not expected and bands != channels):
        wanted = f" ({'/'.join(expected)})" if expected else ""
        raise DataError(
            f"{path}: image mode {mode} ({bands} channel(s)) but the model expects {channels} channel(s){wanted}"
        )


def check_input(paths: list[Path], cfg: PipelineConfig) -> None:
    """Checks from the file headers, before any voxel is read: the files open, they are 2D or 3D as the model,
    they hold the channels it expects, and they are not larger than ``inference.max_voxels``."""
    for path in paths:
        _check_openable(path)
    if cfg.spatial_dims == 3:
        _check_volume_headers(paths, cfg)
    else:
        for path in paths:
            _check_image_header(path, cfg)


def check_voxels(image: torch.Tensor, source: str | list[str]) -> bool:
    """DataError if a loaded image holds NaN or infinite values; True if it is uniform (e.g. all zero)."""
    values = torch.as_tensor(image)
    if values.is_floating_point():
        bad = ~torch.isfinite(values)
        if bool(bad.any()):
            names = source if isinstance(source, list) else [source]
            per_channel = bad.flatten(1).sum(1) if len(names) > 1 and values.shape[0] == len(names) else None
            name = names[int(torch.nonzero(per_channel)[0])] if per_channel is not None else names[0]
            raise DataError(f"{name}: {int(bad.sum()):,} voxel(s) are NaN or infinite; fix the scan before segmenting")
    if values.numel() and bool(values.min() == values.max()):
        name = source[0] if isinstance(source, list) else source
        log.warning("%s: every voxel is %s; nothing to segment, the mask is empty", name, values.flatten()[0].item())
        return True
    return False


def _numpy(affine: object) -> np.ndarray:
    from monai.utils import convert_to_numpy

    return convert_to_numpy(affine, dtype=np.float64)


def _root_cause(exc: BaseException) -> str:
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return f"{exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": ")
