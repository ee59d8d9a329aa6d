"""The one reader of 2D images (PNG, JPEG, BMP, TIFF) outside the MONAI transforms: Pillow, with one-line errors
naming the file."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from medseg.core.errors import DataError, MedsegError, error_summary


def open_image(path: Path, role: str = "image", max_pixels: int | None = None) -> Image.Image:
    """Open and decode a 2D image (its size checked against ``max_pixels`` before decoding).

    Raises:
        DataError: missing, unreadable, too large, corrupt or truncated; the message names ``path`` and ``role``.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: {role} file not found")
    try:
        image = Image.open(path)
        if max_pixels is not None and image.width * image.height > max_pixels:
            raise DataError(
                f"{path}: {image.width}x{image.height} = {image.width * image.height:,} pixels, "
                f"above inference.max_voxels={max_pixels:,}"
            )
        image.load()
    except MedsegError:
        raise
    except UnidentifiedImageError:
        raise DataError(f"{path}: not a readable image") from None
    except PermissionError:
        raise DataError(f"{path}: cannot open ({role} file: permission denied)") from None
    except Image.DecompressionBombError as exc:
        raise DataError(f"{path}: {role} too large ({exc})") from None
    except (OSError, SyntaxError, ValueError, struct.error) as exc:
        raise DataError(f"{path}: corrupt or truncated {role} ({error_summary(exc)})") from None
    return image


#: a JPEG mask's pixels from here to 255 - LOSSY_MARGIN are grey edges the compression made (counted, then thresholded)
LOSSY_MARGIN = 32


def decode_mask(image: Image.Image) -> Image.Image:
    """A mask as one channel of label values, as tools store them: RGB(A) masks whose colour channels are equal (how
    Kvasir-SEG ships its masks) give that channel; a JPEG mask (lossy: its edges blur into grey, its channels drift
    apart) is thresholded at mid-range to 0 / 255. Colour-coded masks (channels that differ) come back unchanged."""
    if image.format == "JPEG":
        grey = np.asarray(image.convert("L"))
        return Image.fromarray(np.where(grey >= 128, 255, 0).astype(np.uint8))
    if image.mode in ("RGB", "RGBA"):
        array = np.asarray(image)
        opaque = image.mode == "RGB" or bool((array[..., 3] == 255).all())
        if opaque and (array[..., 0] == array[..., 1]).all() and (array[..., 1] == array[..., 2]).all():
            return Image.fromarray(np.ascontiguousarray(array[..., 0]))
    return image


def lossy_pixels(image: Image.Image) -> int:
    """How many pixels of a JPEG mask are neither near 0 nor near 255 (0 for lossless masks)."""
    if image.format != "JPEG":
        return 0
    grey = np.asarray(image.convert("L"))
    return int(np.count_nonzero((grey > LOSSY_MARGIN) & (grey < 255 - LOSSY_MARGIN)))


def frame_count(image: Image.Image) -> int:
    """How many frames an image holds (a multi-page TIFF is a stack, not one 2D image)."""
    return int(getattr(image, "n_frames", 1))


def read_mask(path: str | Path) -> np.ndarray:
    """A reference mask as a boolean (H, W) array (binarised at > 0)."""
    return np.asarray(decode_mask(open_image(Path(path), "mask"))) > 0


def read_rgb(path: str | Path) -> np.ndarray:
    """An image as (H, W, 3) uint8 RGB, for drawing overlays."""
    return np.asarray(open_image(Path(path)).convert("RGB"))


def save_png(array: np.ndarray, path: Path) -> None:
    """Write a uint8 array as PNG, atomically."""
    from medseg.core.atomic import atomic_path

    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")
