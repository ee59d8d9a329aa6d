"""Deterministic synthetic dermoscopy-like lesion segmentation dataset.

Used as the embedded default dataset when no real data is available. Each case is an RGB image of skin
with one irregular pigmented lesion, optional hairs and dermatoscope vignetting, plus the exact binary
lesion mask. The layout written to disk is::

    out_dir/
        images/synth_000.png   RGB uint8
        masks/synth_000.png    L uint8, values {0, 255}
        manifest.json          parameters + generator version

Generation is fully determined by ``seed``: case ``i`` draws from its own child of
``np.random.SeedSequence(seed)``, so a case does not depend on how many cases are generated.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage as ndi
from skimage import draw, filters, transform

__all__ = ["GENERATOR_NAME", "GENERATOR_VERSION", "MULTICLASS_LABELS", "generate_dermoscopy_dataset", "synthesize_case"]

GENERATOR_NAME = "medseg.data.synthetic.dermoscopy"
#: Bump whenever the images produced for a given seed change, so cached datasets are rebuilt.
GENERATOR_VERSION = 1

_MANIFEST = "manifest.json"
_MIN_FRACTION = 0.05
_MAX_FRACTION = 0.60


# --------------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------------


def _smoothstep(edge0: float, edge1: float, x: np.ndarray) -> np.ndarray:
    """Hermite smoothstep from 0 (x <= edge0) to 1 (x >= edge1)."""
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Low-frequency noise field with features of roughly ``scale`` pixels, zero mean and unit std.

    Args:
        rng: Random generator.
        shape: Output (H, W).
        scale: Approximate feature size in pixels.

    Returns:
        Float32 array of ``shape``.
    """
    h, w = shape
    lh, lw = max(3, int(np.ceil(h / scale)) + 2), max(3, int(np.ceil(w / scale)) + 2)
    small = ndi.gaussian_filter(rng.standard_normal((lh, lw)), sigma=0.8, mode="wrap")
    field = transform.resize(small, (h, w), order=3, mode="reflect", anti_aliasing=False)
    field = field - field.mean()
    std = field.std()
    return (field / std if std > 0 else field).astype(np.float32)


def _periodic_profile(rng: np.random.Generator, n: int, harmonics: range, amp: float, decay: float) -> np.ndarray:
    """Random periodic 1D profile sampled at ``n`` angles in [0, 2*pi)."""
    theta = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)
    out = np.zeros(n)
    for k in harmonics:
        out += rng.uniform(0.0, amp) / k**decay * np.cos(k * theta + rng.uniform(0.0, 2.0 * np.pi))
    return out


# --------------------------------------------------------------------------------------------------
# components of one case
# --------------------------------------------------------------------------------------------------


def _skin(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Warm skin background (H, W, 3) float in 0..255 with low-frequency blotches and fine texture."""
    pale = np.array([238.0, 204.0, 184.0])
    tan = np.array([196.0, 140.0, 105.0])
    base = pale + rng.uniform(0.0, 1.0) * (tan - pale) + rng.normal(0.0, 5.0, 3)
    # mild erythema / uneven pigmentation: low-frequency noise, stronger in green/blue than red
    blotch = _smooth_noise(rng, shape, rng.uniform(25.0, 60.0))[..., None]
    skin = base * (1.0 + 0.035 * blotch * np.array([0.4, 1.0, 1.1]))
    # fine skin texture (pores, micro relief)
    texture = filters.gaussian(rng.standard_normal(shape), sigma=0.8)
    texture /= texture.std() + 1e-8
    skin = skin + rng.uniform(2.0, 5.0) * texture[..., None]
    return skin


def _lesion_geometry(
    rng: np.random.Generator, shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Irregular star-shaped lesion.

    Returns:
        mask (bool), normalised radius ``d`` (0 at the centre, 1 on the boundary), signed radial distance
        to the boundary in pixels (positive inside) and the mean radius ``r0`` in pixels.
    """
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    target = float(np.exp(rng.uniform(np.log(0.05), np.log(0.55))))
    cy = h * rng.uniform(0.35, 0.65)
    cx = w * rng.uniform(0.35, 0.65)
    rot = rng.uniform(0.0, np.pi)
    aspect = rng.uniform(0.7, 1.0)

    # boundary: a few strong low-order harmonics + faint high-order wiggle, tabulated over angle
    n_ang = 1024
    profile = _periodic_profile(rng, n_ang, range(2, int(rng.integers(4, 9))), amp=0.45, decay=0.9)
    profile += _periodic_profile(rng, n_ang, range(9, 24), amp=0.06, decay=0.5)
    span = np.abs(profile).max()
    if span > 0.55:  # keep the radius positive and the shape star-like
        profile *= 0.55 / span
    radius_table = 1.0 + profile
    table_theta = np.linspace(0.0, 2.0 * np.pi, n_ang, endpoint=False)

    dy, dx = yy - cy, xx - cx
    u = (np.cos(rot) * dx + np.sin(rot) * dy) * np.sqrt(aspect)
    v = (-np.sin(rot) * dx + np.cos(rot) * dy) / np.sqrt(aspect)
    rho = np.hypot(u, v)
    theta = np.mod(np.arctan2(v, u), 2.0 * np.pi)
    r_unit = np.interp(theta, table_theta, radius_table, period=2.0 * np.pi)

    r0 = float(np.sqrt(target * h * w / np.pi))
    for _ in range(4):  # rescale until the visible fraction lands in range (clipping at borders)
        mask = rho <= r0 * r_unit
        frac = float(mask.mean())
        if _MIN_FRACTION <= frac <= _MAX_FRACTION:
            break
        r0 *= float(np.sqrt(np.clip(target, _MIN_FRACTION, _MAX_FRACTION) / max(frac, 1e-4)))
    mask = rho <= r0 * r_unit
    # the shape is star-shaped around an interior centre, so this is a no-op except for pixel-level
    # degenerate cases; it guarantees a single component without holes
    lab, n = ndi.label(mask)
    if n > 1:
        sizes = ndi.sum(mask, lab, index=np.arange(1, n + 1))
        mask = lab == (int(np.argmax(sizes)) + 1)
    mask = ndi.binary_fill_holes(mask)
    r_pix = r0 * r_unit
    return mask, rho / r_pix, r_pix - rho, r0


def _lesion_layer(
    rng: np.random.Generator, shape: tuple[int, int], d: np.ndarray, sdist: np.ndarray, r0: float
) -> tuple[np.ndarray, np.ndarray]:
    """Lesion colour (H, W, 3) and opacity (H, W) with internal structure and a soft border."""
    # brown hues: scale a reference colour and jitter it, keeping R >= G >= B (no green/purple casts)
    light = np.sort(np.array([172.0, 116.0, 82.0]) * rng.uniform(0.85, 1.1) + rng.normal(0.0, 6.0, 3))[::-1]
    dark = np.sort(np.array([72.0, 44.0, 32.0]) * rng.uniform(0.6, 1.2) + rng.normal(0.0, 4.0, 3))[::-1]
    if rng.uniform() < 0.3:  # some lesions have a grey-blue tint in the darkest parts
        dark = dark * 0.6 + np.array([70.0, 70.0, 85.0]) * 0.4

    inside = np.clip(1.0 - d, 0.0, 1.0)
    t = rng.uniform(0.05, 0.45) + rng.uniform(0.2, 0.6) * inside ** rng.uniform(0.5, 1.5)
    t = t + rng.uniform(0.08, 0.2) * _smooth_noise(rng, shape, max(4.0, r0 / rng.uniform(2.0, 5.0)))

    # dark blotches
    h, w = shape
    yy, xx = np.ogrid[0:h, 0:w]
    cand = np.argwhere(d < 0.7)
    for _ in range(int(rng.integers(0, 4))):
        by, bx = cand[rng.integers(len(cand))]
        s = r0 * rng.uniform(0.08, 0.25)
        t = t + rng.uniform(0.2, 0.5) * np.exp(-((yy - by) ** 2 + (xx - bx) ** 2) / (2.0 * s * s))

    # dots / globules
    n_dots = int(rng.integers(0, 25))
    if n_dots:
        dots = np.zeros(shape)
        idx = cand[rng.integers(len(cand), size=n_dots)]
        dots[idx[:, 0], idx[:, 1]] = rng.uniform(0.5, 1.0, n_dots)
        dots = filters.gaussian(dots, sigma=rng.uniform(0.8, 1.8))
        t = t + dots / (dots.max() + 1e-8) * rng.uniform(0.3, 0.6)

    # faint reticular pigment network: zero-crossing lines of band-pass noise form a connected mesh
    net_amp = rng.uniform(0.0, 0.3)
    if net_amp > 0.08:
        n = rng.standard_normal(shape)
        band = filters.gaussian(n, sigma=2.0) - filters.gaussian(n, sigma=3.5)
        ridges = np.exp(-((band / (0.3 * band.std() + 1e-8)) ** 2))
        t = t + net_amp * ridges * inside**0.3

    t = np.clip(t, 0.0, 1.0)[..., None]
    colour = light * (1.0 - t) + dark * t
    edge = rng.uniform(1.0, 4.0)  # border softness in pixels
    opacity = rng.uniform(0.85, 1.0) * _smoothstep(-edge, edge, sdist)
    return colour, opacity


def _hairs(rng: np.random.Generator, shape: tuple[int, int], n_hairs: int) -> np.ndarray:
    """Opacity map (H, W) of ``n_hairs`` thin curved dark strokes (quadratic Bezier curves)."""
    h, w = shape
    alpha = np.zeros(shape)
    diag = float(np.hypot(h, w))
    for _ in range(n_hairs):
        # a line through a random point, extended (mostly) across the image, bent by a control point
        py, px = rng.uniform(0, h), rng.uniform(0, w)
        ang = rng.uniform(0.0, np.pi)
        length = diag * rng.uniform(0.4, 1.2)
        dy, dx = np.sin(ang), np.cos(ang)
        s0, s1 = -length * rng.uniform(0.3, 0.7), length
        p0 = np.array([py + s0 * dy, px + s0 * dx])
        p2 = np.array([py + (s0 + s1) * dy, px + (s0 + s1) * dx])
        bend = rng.normal(0.0, 0.15) * length
        p1 = (p0 + p2) / 2.0 + bend * np.array([dx, -dy])
        (r0, c0), (r1, c1), (r2, c2) = (np.rint(p).astype(int) for p in (p0, p1, p2))
        rr, cc = draw.bezier_curve(r0, c0, r1, c1, r2, c2, weight=1.0, shape=shape)
        width = rng.uniform(0.5, 1.1)
        if rr.size == 0:
            continue
        line = np.zeros(shape)
        line[rr, cc] = 1.0
        soft = filters.gaussian(line, sigma=width)
        peak = np.percentile(soft[rr, cc], 90)
        alpha = np.maximum(alpha, np.clip(soft / (peak + 1e-8), 0.0, 1.0) * rng.uniform(0.75, 0.97))
    return alpha


def _vignette(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Multiplicative dermatoscope-lens vignette (H, W): ~1 in the field of view, dark outside the circle."""
    h, w = shape
    yy, xx = np.ogrid[0:h, 0:w]
    cy, cx = h / 2.0 + rng.normal(0.0, 0.03 * h), w / 2.0 + rng.normal(0.0, 0.03 * w)
    half_diag = 0.5 * float(np.hypot(h, w))
    r = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2) / half_diag
    radius = rng.uniform(0.78, 1.05)
    width = rng.uniform(0.02, 0.1)
    falloff = 1.0 - 0.12 * (r / radius) ** 2  # gentle optical falloff inside the lens
    outside = _smoothstep(radius - width / 2, radius + width / 2, r)
    floor = rng.uniform(0.04, 0.15)
    return falloff * (1.0 - outside) + floor * outside


# --------------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------------


#: the classes of the multi-class synthetic set (mask values)
MULTICLASS_LABELS = {1: "lesion", 2: "hair", 3: "ruler"}


def _ruler(rng: np.random.Generator, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """A ruler along one image edge, as dermoscopes show: (opacity of its light strip, mask of its dark ticks)."""
    h, w = shape
    strip = np.zeros(shape)
    ticks = np.zeros(shape, dtype=bool)
    depth = max(4, int(round(min(h, w) * rng.uniform(0.07, 0.11))))
    spacing = max(3, int(round(min(h, w) * rng.uniform(0.03, 0.05))))
    offset = int(rng.integers(0, spacing))
    if rng.random() < 0.5:  # top or bottom edge
        rows = slice(0, depth) if rng.random() < 0.5 else slice(h - depth, h)
        strip[rows, :] = 0.85
        for index, col in enumerate(range(offset, w, spacing)):
            long = depth if index % 5 == 0 else depth // 2
            band = range(rows.start, rows.start + long) if rows.start == 0 else range(h - long, h)
            ticks[list(band), col] = True
    else:
        cols = slice(0, depth) if rng.random() < 0.5 else slice(w - depth, w)
        strip[:, cols] = 0.85
        for index, row in enumerate(range(offset, h, spacing)):
            long = depth if index % 5 == 0 else depth // 2
            band = range(cols.start, cols.start + long) if cols.start == 0 else range(w - long, w)
            ticks[row, list(band)] = True
    return strip, ticks


def synthesize_case(
    rng: np.random.Generator, image_size: tuple[int, int], multiclass: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Synthesise one dermoscopy-like case.

    Args:
        rng: Random generator; the case is a deterministic function of its state.
        image_size: Output (H, W).
        multiclass: also draw a ruler, and label lesion, hair and ruler ticks (:data:`MULTICLASS_LABELS`).

    Returns:
        ``(image, mask)``: image (H, W, 3) uint8 RGB and mask (H, W): bool, the exact lesion region (hairs and
        vignetting are not part of it); multi-class: uint8 0 background, 1 lesion, 2 hair (over the lesion), 3 ruler
        ticks (over everything).
    """
    shape = (int(image_size[0]), int(image_size[1]))
    if shape[0] < 16 or shape[1] < 16:
        raise ValueError(f"image_size must be at least 16x16, got {image_size}")

    skin = _skin(rng, shape)
    mask, d, sdist, r0 = _lesion_geometry(rng, shape)
    colour, opacity = _lesion_layer(rng, shape, d, sdist, r0)
    a = opacity[..., None]
    img = skin * (1.0 - a) + colour * a

    # smooth low-frequency illumination: linear gradient + gentle blobs
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    ang = rng.uniform(0.0, 2.0 * np.pi)
    ramp = (np.cos(ang) * (xx / w - 0.5) + np.sin(ang) * (yy / h - 0.5)) * rng.uniform(0.0, 0.25)
    light = 1.0 + ramp + 0.03 * _smooth_noise(rng, shape, 80.0)
    img = img * light[..., None]

    n_hairs = int(rng.integers(0, 7))
    hair = np.zeros(shape, dtype=bool)
    if n_hairs:
        hair_alpha = _hairs(rng, shape, n_hairs)[..., None]
        hair_colour = np.array([38.0, 26.0, 20.0]) * rng.uniform(0.5, 1.4)
        img = img * (1.0 - hair_alpha) + hair_colour * hair_alpha
        hair = hair_alpha[..., 0] > 0.5

    img = img * _vignette(rng, shape)[..., None]
    img = img + rng.normal(0.0, rng.uniform(1.0, 3.5), img.shape)
    if not multiclass:
        image = np.clip(np.rint(img), 0, 255).astype(np.uint8)
        return image, mask.astype(bool)
    strip, ticks = _ruler(rng, shape)  # drawn last: the ruler lies on top of skin, lesion and hair
    img = img * (1.0 - strip[..., None]) + 225.0 * strip[..., None]
    img[ticks] = 25.0
    labels = np.zeros(shape, dtype=np.uint8)
    labels[mask.astype(bool)] = 1
    labels[hair] = 2
    labels[strip > 0] = 0  # the strip hides what is under it
    labels[ticks] = 3
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), labels


def _case_ids(num_cases: int) -> list[str]:
    width = max(3, len(str(num_cases - 1)))
    return [f"synth_{i:0{width}d}" for i in range(num_cases)]


def _expected_manifest(num_cases: int, image_size: tuple[int, int], seed: int, multiclass: bool = False) -> dict:
    return {
        "generator": GENERATOR_NAME,
        "version": GENERATOR_VERSION,
        "num_cases": num_cases,
        "image_size": [int(image_size[0]), int(image_size[1])],
        "seed": seed,
        **({"labels": {str(k): v for k, v in MULTICLASS_LABELS.items()}} if multiclass else {}),
    }


def _is_complete(out_dir: Path, expected: dict) -> bool:
    """Whether ``out_dir`` already holds a complete dataset generated with ``expected`` parameters."""
    try:
        manifest = json.loads((out_dir / _MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(manifest, dict) or any(manifest.get(k) != v for k, v in expected.items()):
        return False
    ids = manifest.get("ids")
    if not isinstance(ids, list) or len(ids) != expected["num_cases"]:
        return False
    return all((out_dir / "images" / f"{i}.png").is_file() and (out_dir / "masks" / f"{i}.png").is_file() for i in ids)


def _is_replaceable(out_dir: Path) -> bool:
    """Only an empty folder or a folder previously written by this generator may be replaced."""
    entries = {p.name for p in out_dir.iterdir()}
    if not entries:
        return True
    try:
        manifest = json.loads((out_dir / _MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return entries <= {"images", "masks"}
    return isinstance(manifest, dict) and manifest.get("generator") == GENERATOR_NAME


def generate_dermoscopy_dataset(
    out_dir: Path,
    num_cases: int = 60,
    image_size: tuple[int, int] = (192, 256),
    seed: int = 0,
    multiclass: bool = False,
) -> Path:
    """Write images/<id>.png (RGB uint8) and masks/<id>.png (L, 0/255; multi-class: the label values 0-3 of
    :data:`MULTICLASS_LABELS`) under out_dir; return out_dir.

    ids are synth_000, synth_001, ... Reuses an existing complete dataset with the same parameters
    (a manifest.json in out_dir records num_cases, image_size (H, W), seed, generator version);
    otherwise builds into a temporary sibling folder and renames it into place atomically.

    Args:
        out_dir: Destination folder (created; its parent must be writable).
        num_cases: Number of image/mask pairs.
        image_size: (H, W) of every image.
        seed: Master seed; the same seed gives byte-identical files.

    Returns:
        ``out_dir`` as a ``Path``.

    Raises:
        ValueError: On invalid parameters.
        FileExistsError: If ``out_dir`` exists and holds something other than a dataset of this generator.
    """
    out_dir = Path(out_dir)
    if num_cases < 1:
        raise ValueError(f"num_cases must be >= 1, got {num_cases}")
    size = (int(image_size[0]), int(image_size[1]))
    expected = _expected_manifest(int(num_cases), size, int(seed), multiclass)
    if _is_complete(out_dir, expected):
        return out_dir
    if out_dir.exists() and not (out_dir.is_dir() and _is_replaceable(out_dir)):
        raise FileExistsError(f"{out_dir} exists and is not a synthetic dataset; refusing to overwrite it")

    parent = out_dir.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=parent))
    trash: Path | None = None
    try:
        (tmp / "images").mkdir()
        (tmp / "masks").mkdir()
        ids = _case_ids(num_cases)
        children = np.random.SeedSequence(int(seed)).spawn(num_cases)
        for case_id, child in zip(ids, children, strict=True):
            image, mask = synthesize_case(np.random.default_rng(child), size, multiclass)
            Image.fromarray(image).save(tmp / "images" / f"{case_id}.png", compress_level=1)
            values = mask if multiclass else mask.astype(np.uint8) * 255
            Image.fromarray(values).save(tmp / "masks" / f"{case_id}.png", compress_level=1)
        (tmp / _MANIFEST).write_text(json.dumps({**expected, "ids": ids}, indent=2) + "\n")

        if out_dir.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=parent))
            out_dir.replace(trash / "data")
        try:
            tmp.replace(out_dir)
        except OSError:
            # another process won the race; keep theirs if it is what we want
            if not _is_complete(out_dir, expected):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)
    return out_dir
