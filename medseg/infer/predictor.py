"""A predictor built once from a trained model and reused for many images or scans.

scan -> header (read once, checked) -> reader -> the validation preprocessing -> network (whole image in 2D,
Gaussian-blended sliding window in 3D; optional mirror TTA) -> sigmoid/softmax -> back onto the input's own grid
(MONAI ``Invertd`` in 2D, :mod:`medseg.infer.resampling` in 3D) -> [dense CRF with the image, 2D RGB] -> threshold
or argmax -> the post-processing chosen at training time.
"""

from __future__ import annotations

import copy
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medseg.core.errors import DataError, MedsegError, user_error_in
from medseg.imageio.headers import ScanHeader
from medseg.infer.backends import (
    Backend,
    BackendChoice,
    random_inputs,
    resolve_backend,
    runtime_network,
)
from medseg.infer.checks import check_image, check_scans, check_voxels
from medseg.infer.inferers import build_inferer, mirrored_probabilities
from medseg.infer.postprocessing import DENSE_CRF, apply_steps
from medseg.infer.settings import InferenceSettings
from medseg.infer.sources import LoadedModel, SourceOptions, load_model
from medseg.labels import LabelScheme

log = logging.getLogger(__name__)

ImageSource = Path | str | list[str] | list[Path]


@dataclass
class Segmentation:
    """A predicted label map on the input's own grid, with that grid's geometry.

    ``labels`` is post-processed (the dense CRF included, when chosen) and ``raw`` is not (uint8; 2D (H, W), 3D
    (X, Y, Z) as the scan is stored); ``header`` holds the scan's shape, affine and spacing (3D; None for 2D images);
    ``probabilities`` (C, ...; the network's, before any CRF) and the loaded ``image`` (3D) are kept when asked for.
    """

    labels: np.ndarray
    raw: np.ndarray
    header: ScanHeader | None = None
    probabilities: np.ndarray | None = None
    image: np.ndarray | None = None  # the image as loaded (C, x, y, z) on the scan's grid (3D), when asked for

    @property
    def affine(self) -> np.ndarray | None:
        """Voxel-to-RAS (mm) of the labels' grid (3D)."""
        return None if self.header is None else self.header.affine


@dataclass
class Predictor:
    """Segments 2D images or 3D volumes with a trained network, in the input's own geometry.

    Build it once (:meth:`from_model`) and call :meth:`predict` for each image, scan or array.
    """

    network: nn.Module
    settings: InferenceSettings
    steps: list[str] = field(default_factory=list)
    tta: bool = False
    ensemble: list[nn.Module] = field(default_factory=list)  # more networks (folds) whose probabilities are averaged
    backend: Backend | None = None  # None: as the model's inference.backend says (auto: timed here)

    def __post_init__(self) -> None:
        from monai.transforms import Invertd

        self._check_steps()

        from medseg.infer.backends import EXPORTED_NETWORKS
        from medseg.runtime.devices import resolve_device
        from medseg.transforms import inference_transforms

        self.device = resolve_device(self.settings.inference.device, "inference.device")
        exported = any(isinstance(m, EXPORTED_NETWORKS) for m in self.members)
        if exported:
            self.device = torch.device("cpu")  # exported files run on ONNX Runtime's / OpenVINO's / TorchScript's CPU
        for member in self.members:
            member.eval().to(self.device)
        example = random_inputs(self.settings.in_channels, self.settings.working_shape, 1)[0]
        if self.device.type == "cuda":  # ONNX Runtime here is CPU-only; autocast on a GPU is the precision's business
            choice = BackendChoice(Backend("torch"), {})
        elif exported:
            choice = BackendChoice(Backend(), {})
        elif self.backend is not None:  # given: another predictor of this model already chose
            choice = BackendChoice(self.backend, {})
        else:
            windows = self.settings.inference.sw_batch_size if self.settings.spatial_dims == 3 else 1
            windows_input = example.expand(windows, *example.shape[1:]).contiguous()
            choice = resolve_backend(self.network, self.settings.inference, windows_input)
        self.backend: Backend = choice.backend  # what runs the network: the concrete choice, never written back
        self.backend_timings: dict[str, float] = choice.seconds  # inference.backend: auto, seconds per candidate
        # what runs: PyTorch or ONNX Runtime, one per member
        first = choice.runtime if choice.runtime is not None else runtime_network(self.network, self.backend, example)
        self.runtimes = [first, *(runtime_network(member, self.backend, example) for member in self.ensemble)]
        self.runtime = self.runtimes[0]
        self.preprocess = inference_transforms(self.settings.transforms)
        self.inferer = build_inferer(self.settings, self.device)
        # 2D: MONAI's Invertd; 3D: medseg.infer.resampling (same result, a fraction of Invertd's memory)
        self.invert = (
            Invertd(keys="pred", transform=self.preprocess, orig_keys="image", nearest_interp=False)
            if self.settings.spatial_dims == 2
            else None
        )

    @property
    def labels(self) -> LabelScheme:
        """What the outputs mean."""
        return self.settings.labels

    @property
    def members(self) -> list[nn.Module]:
        """The networks whose probabilities are averaged (one unless this is a fold ensemble)."""
        return [self.network, *self.ensemble]

    @classmethod
    def from_model(
        cls,
        model: Path | str,
        tta: bool | None = None,
        steps: list[str] | None = None,
        backend: str | None = None,
        folds: list[int] | None = None,
        device: str | None = None,
    ) -> Predictor:
        """Build from a run folder, its ``model/`` folder, a checkpoint, an MLflow model URI, a file written by
        ``medseg export`` (``.onnx`` runs on ONNX Runtime, ``.ts`` on TorchScript), a cross-validated run (the
        ensemble of its folds; ``folds`` chooses some of them) or an ``inference_plan.json`` (:mod:`.sources`).

        ``steps`` overrides the post-processing saved with the model (used while choosing it); ``backend``
        overrides ``inference.backend`` and ``device`` ``inference.device``. Checkpoints load on any device.
        """
        return cls.from_loaded(load_model(model, SourceOptions(tta, steps, backend, folds, device)))

    @classmethod
    def from_loaded(cls, loaded: LoadedModel) -> Predictor:
        """The predictor of what a source loaded: its networks (a fold ensemble's averaged), or its parts combined."""
        if loaded.parts:
            return CombinedPredictor([cls.from_loaded(part) for part in loaded.parts], loaded.steps)
        return cls(loaded.networks[0], loaded.settings, loaded.steps, loaded.tta, ensemble=loaded.networks[1:])

    def with_steps(self, steps: list[str]) -> Predictor:
        """The same predictor (same network and backend, nothing rebuilt) replaying other post-processing."""
        other = copy.copy(self)
        other.steps = list(steps)
        other._check_steps()
        return other

    def _check_steps(self) -> None:
        """The dense CRF needs pydensecrf2 (ConfigError naming the extra before any image is read)."""
        if DENSE_CRF in self.steps:
            from medseg.infer.crf import require_dense_crf

            require_dense_crf()

    # ------------------------------------------------------------------------------------------------ predict

    def predict(
        self,
        source: ImageSource | np.ndarray,
        affine: np.ndarray | None = None,
        probabilities: bool = False,
        image: bool = False,
    ) -> Segmentation:
        """Segment an image file, a scan (file, DICOM folder, or one file per channel) or an array.

        Args:
            source: a path, a list of paths (one per channel), or an array: 2D (H, W[, C]) uint8 like an image
                file, or 3D (X, Y, Z[, C]) voxels with ``affine`` (voxel-to-RAS, default identity).
            affine: the array's voxel-to-RAS affine (3D arrays only).
            probabilities: keep the class probabilities in the result.
            image: keep the image as loaded (3D: the voxels on the scan's grid, for statistics).
        """
        if isinstance(source, np.ndarray):
            return self._predict_array(source, affine, probabilities)
        paths = [Path(p) for p in source] if isinstance(source, (list, tuple)) else [Path(source)]
        headers = self.check(paths)
        refines = DENSE_CRF in self.steps
        loaded: list[np.ndarray] = []
        probs = self._probabilities(source, True, loaded if image or refines else None)
        raw = self.discretise(probs)
        refined = self.discretise(self.refine(probs, loaded[0])) if refines else raw
        return Segmentation(
            labels=self.postprocess(refined),
            raw=raw,
            header=headers[0] if headers else None,
            probabilities=probs if probabilities else None,
            image=loaded[0] if image and loaded else None,
        )

    def _predict_array(self, array: np.ndarray, affine: np.ndarray | None, probabilities: bool) -> Segmentation:
        from PIL import Image

        with tempfile.TemporaryDirectory(prefix="medseg-array-") as tmp:
            if self.settings.spatial_dims == 2:
                if array.dtype != np.uint8 or array.ndim not in (2, 3):
                    raise DataError(f"a 2D model takes (H, W[, C]) uint8 arrays, got {array.dtype} {array.shape}")
                path = Path(tmp) / "array.png"
                Image.fromarray(array).save(path)
            else:
                import nibabel as nib

                if array.ndim not in (3, 4):
                    raise DataError(f"a 3D model takes (X, Y, Z[, C]) arrays, got shape {array.shape}")
                path = Path(tmp) / "array.nii.gz"
                nib.save(nib.Nifti1Image(np.asarray(array), np.eye(4) if affine is None else affine), path)
            return self.predict(path, probabilities=probabilities)

    def check(self, paths: list[Path]) -> list[ScanHeader]:
        """The input checks, from the headers: 3D returns each file's header (read once), 2D an empty list."""
        if self.settings.spatial_dims == 3:
            return check_scans(paths, self.settings)
        for path in paths:
            check_image(path, self.settings)
        return []

    def probabilities(self, image: ImageSource, checked: bool = False) -> np.ndarray:
        """Class probabilities (C, *spatial) on the input's own grid (2D: (C, H, W)).

        ``checked``: the input already passed :meth:`check` (its headers are not read again).
        """
        return self._probabilities(image, checked)

    def _probabilities(self, image: ImageSource, checked: bool, loaded: list[np.ndarray] | None = None) -> np.ndarray:
        """:meth:`probabilities`; the image as loaded is appended to ``loaded`` when given."""
        from monai.data import MetaTensor

        source = [str(p) for p in image] if isinstance(image, (list, tuple)) else str(image)
        name = source[0] if isinstance(source, list) else source
        if not checked:
            self.check([Path(p) for p in (source if isinstance(source, list) else [source])])
        try:
            data = self.preprocess({"image": source}, end=1)  # load only: check the voxels as read
            if loaded is not None:
                loaded.append(np.asarray(data["image"], dtype=np.float32))
            if check_voxels(data["image"], source):  # uniform: nothing to segment, background everywhere
                shape = [int(n) for n in data["image"].meta["spatial_shape"]]
                probs = np.zeros((self.settings.out_channels, *shape[:: -1 if len(shape) == 2 else 1]), np.float32)
                probs[0] = 0.0 if probs.shape[0] == 1 or self.multilabel else 1.0  # (2D: PIL's (W, H) -> (H, W))
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
        batch = data["image"].as_tensor()[None].to(self.device)
        channels, dims = self.settings.in_channels, self.settings.spatial_dims
        if batch.ndim != dims + 2 or batch.shape[1] != channels:
            raise DataError(
                f"{name}: image of shape {'x'.join(map(str, batch.shape[1:]))} (channels first) after preprocessing, "
                f"but the {dims}D model expects {channels} channel(s)"
            )
        # keep only the metadata of the preprocessed image: the way back needs its history, not its voxels
        data["image"] = MetaTensor(
            torch.empty(0), meta=data["image"].meta, applied_operations=data["image"].applied_operations
        )
        probs = self._network_probabilities(batch).cpu()
        del batch
        if self.settings.spatial_dims == 3:
            return self._back_onto_scan(probs[0], data["image"])
        data["pred"] = MetaTensor(probs[0])  # a MetaTensor, or Invertd silently leaves it untouched
        inverted = np.asarray(self.invert(data)["pred"], dtype=np.float32)
        return inverted.transpose(0, 2, 1)  # the PIL reader is (W, H); images are (H, W)

    def _network_probabilities(self, batch: torch.Tensor) -> torch.Tensor:
        """The members' mean probabilities on the preprocessed grid; on a GPU, stitched where the volume fits (else
        on the CPU, and again on the CPU after a CUDA out-of-memory error, with a warning)."""
        inferer = self.inferer
        if self.device.type == "cuda" and self.settings.spatial_dims == 3:
            from medseg.infer.inferers import stitch_device

            inferer = build_inferer(
                self.settings, self.device, stitch_device(self.settings, tuple(batch.shape), self.device)
            )
        try:
            return self._mean_probabilities(batch, inferer)
        except torch.cuda.OutOfMemoryError:
            if self.settings.spatial_dims == 2:
                raise
            log.warning("CUDA out of memory stitching a %s volume on the GPU; stitching on the CPU", tuple(batch.shape))
            torch.cuda.empty_cache()
            return self._mean_probabilities(batch, build_inferer(self.settings, self.device, torch.device("cpu")))

    def _mean_probabilities(self, batch: torch.Tensor, inferer: Any) -> torch.Tensor:
        from medseg.runtime.devices import precision_for

        # on a GPU, the windows run under bf16/fp16 autocast (probabilities are reduced in fp32); on the CPU as trained
        precision = precision_for(self.device, self.settings.gpu_precision if self.device.type == "cuda" else False)
        with torch.inference_mode(), precision.autocast():
            probs = mirrored_probabilities(self.runtimes[0], batch, self.tta, inferer, self.multilabel)
            for runtime in self.runtimes[1:]:  # a fold ensemble: the mean of the members' probabilities
                probs.add_(mirrored_probabilities(runtime, batch, self.tta, inferer, self.multilabel))
            if len(self.runtimes) > 1:
                probs.div_(len(self.runtimes))
        return probs

    @staticmethod
    def _back_onto_scan(probs: torch.Tensor, preprocessed: Any) -> np.ndarray:
        """3D probabilities from the preprocessed grid onto the scan's voxel grid, as loaded."""
        from monai.utils import convert_to_numpy

        from medseg.infer.resampling import resample_to_grid

        meta = preprocessed.meta
        shape = tuple(int(n) for n in meta["spatial_shape"])
        crop = next((op for op in preprocessed.applied_operations if op["class"] == "CropForeground"), None)
        cropped = tuple(bool(n) for n in crop["extra_info"]["cropped"]) if crop else (False,) * 6
        source_affine = convert_to_numpy(meta["affine"], dtype=np.float64)
        target_affine = convert_to_numpy(meta["original_affine"], dtype=np.float64)
        return resample_to_grid(probs, source_affine, target_affine, shape, cropped_sides=cropped).numpy()

    @property
    def multilabel(self) -> bool:
        """Region channels (one sigmoid each), painted into a label map."""
        return self.labels.multilabel

    def discretise(self, probs: np.ndarray) -> np.ndarray:
        """Probabilities -> uint8 label map (threshold for binary, argmax for multi-class, regions painted in
        ``data.region_order``)."""
        return self.labels.discretise(probs)

    def refine(self, probs: np.ndarray, loaded: np.ndarray) -> np.ndarray:
        """2D probabilities (C, H, W) after the dense CRF on the image as loaded (PIL's (W, H, 3), on the same grid)."""
        from medseg.infer.crf import dense_crf

        rgb = loaded.transpose(1, 0, 2)
        return dense_crf(probs, rgb, self.settings.postprocessing, independent=self.multilabel)

    def postprocess(self, labels: np.ndarray) -> np.ndarray:
        """This predictor's mask post-processing steps applied to a label map."""
        return apply_steps(labels, self.steps, self.settings.postprocessing)

    def segment(self, image: ImageSource) -> tuple[np.ndarray, np.ndarray]:
        """Label maps before and after post-processing (uint8, the input's shape)."""
        result = self.predict(image)
        return result.raw, result.labels


class CombinedPredictor(Predictor):
    """Predictors of different runs (each maybe a fold ensemble) whose probabilities on the input's own grid are
    averaged, then discretised and post-processed once: what an ``inference_plan.json`` describes."""

    def __init__(self, members: list[Predictor], steps: list[str]) -> None:  # no dataclass __init__: no network
        self.parts, self.steps = members, list(steps)
        self.settings, self.tta = members[0].settings, members[0].tta
        self.network, self.ensemble = members[0].network, []
        self.device = members[0].device
        self.backend, self.backend_timings = members[0].backend, {}
        self.runtimes = [runtime for member in members for runtime in member.runtimes]
        self.runtime = self.runtimes[0]
        self._check_steps()

    def check(self, paths: list[Path]) -> list[ScanHeader]:
        return self.parts[0].check(paths)

    def _probabilities(self, image: ImageSource, checked: bool, loaded: list[np.ndarray] | None = None) -> np.ndarray:
        total = self.parts[0]._probabilities(image, checked, loaded)
        for member in self.parts[1:]:
            total += member.probabilities(image, checked=True)
        return total / len(self.parts)


def _root_cause(exc: BaseException) -> str:
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return f"{exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": ")
