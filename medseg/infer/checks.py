"""Checks on what a predictor is given, from the file headers before any voxel is read, and on the voxels once
loaded: one-line errors naming the file."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from medseg.core.errors import DataError
from medseg.imageio.formats import IMAGE_2D_SUFFIXES, SUPPORTED_VOLUMES, is_image_2d, is_volume_file
from medseg.imageio.headers import ScanHeader, read_header, shape_text
from medseg.imageio.images import frame_count, open_image
from medseg.infer.settings import InferenceSettings

log = logging.getLogger(__name__)


def check_openable(path: Path) -> None:
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


def check_scans(paths: list[Path], settings: InferenceSettings) -> list[ScanHeader]:
    """The headers of a 3D case's files (one per channel file), read once; DataError if the case is 2D, larger
    than ``inference.max_voxels``, or does not hold the channels the model expects."""
    for path in paths:
        check_openable(path)
    limit, channels, headers = settings.inference.max_voxels, 0, []
    for path in paths:
        if is_image_2d(path):
            raise DataError(f"{path}: a 2D image, but the model is 3D (it reads {SUPPORTED_VOLUMES})")
        header = read_header(path)  # DataError for an unreadable header or fewer than 3 dimensions
        voxels = int(np.prod(header.spatial_shape, dtype=np.int64)) * header.channels
        if voxels > limit:
            raise DataError(
                f"{path}: {shape_text(header.spatial_shape)} x {header.channels} channel(s) = {voxels:,} voxels, "
                f"above inference.max_voxels={limit:,}"
            )
        channels += header.channels
        headers.append(header)
    if channels != settings.in_channels:
        raise DataError(
            f"{paths[0]}: the scan holds {channels} channel(s) but the model expects {settings.in_channels}"
        )
    return headers


def check_image(path: Path, settings: InferenceSettings) -> None:
    """DataError if a 2D input is a scan, unreadable, a stack, too large, or not in the mode the model expects."""
    check_openable(path)
    if path.is_dir() or is_volume_file(path):
        raise DataError(f"{path}: a 3D scan, but the model is 2D (it reads {', '.join(IMAGE_2D_SUFFIXES)} images)")
    channels = settings.in_channels
    with open_image(path, max_pixels=settings.inference.max_voxels) as image:
        mode, bands, frames = image.mode, len(image.getbands()), frame_count(image)
        opaque = mode == "RGBA" and image.getchannel("A").getextrema()[0] == 255
    if frames > 1:
        raise DataError(f"{path}: {frames} frames (a 3D stack), but the model is 2D")
    if opaque and channels == 3:
        log.warning("%s: image mode RGBA, fully opaque: read as RGB", path)
        return
    expected = {1: ("L",), 3: ("RGB",)}.get(channels, ())
    if (expected and mode not in expected) or (not expected and bands != channels):
        wanted = f" ({'/'.join(expected)})" if expected else ""
        raise DataError(
            f"{path}: image mode {mode} ({bands} channel(s)) but the model expects {channels} channel(s){wanted}"
        )


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
