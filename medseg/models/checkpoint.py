"""Checkpoints: weights plus everything needed to rebuild the network, loaded with ``weights_only=True``."""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from medseg.core.atomic import atomic_write_bytes
from medseg.core.errors import ModelError, error_summary
from medseg.core.layout import BEST_CHECKPOINT, MODEL_DIR, checkpoint_candidates

if TYPE_CHECKING:
    from medseg.config.schema import PipelineConfig


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Serialise ``state`` to memory, then write it atomically (never a half-written checkpoint)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint safely (``weights_only=True``: it cannot run code)."""
    if not path.is_file():
        raise ModelError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, pickle.UnpicklingError) as exc:
        raise ModelError(f"{path}: not a readable medseg checkpoint ({error_summary(exc)})") from None
    if not isinstance(state, dict) or "state_dict" not in state or "network" not in state:
        raise ModelError(f"{path}: not a medseg checkpoint (missing network description or weights)")
    return state


def network_from_checkpoint(state: dict[str, Any], path: Path) -> nn.Module:
    """Rebuild the network described in a checkpoint and load its weights."""
    from medseg.models.registry import build_network

    spec = state["network"]
    network = build_network(
        spec["name"], spec["spatial_dims"], spec["in_channels"], spec["out_channels"], spec.get("args", {})
    )
    try:
        network.load_state_dict(state["state_dict"])
    except RuntimeError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        detail = " ".join(lines[1:2] or lines[:1])  # line 1 only says "Error(s) in loading state_dict for UNet:"
        detail = detail if len(detail) <= 200 else detail[:197] + "..."
        raise ModelError(f"{path}: weights do not fit network {spec['name']} ({detail})") from None
    return network.eval()


def resolve_checkpoint(model: Path) -> Path:
    """Accept a trained run folder, its ``model/`` folder, or a ``.pt`` file."""
    model = Path(model)
    for candidate in checkpoint_candidates(model):
        if candidate.is_file():
            return candidate
    raise ModelError(
        f"{model}: no checkpoint found (expected a .pt checkpoint, a .onnx or .ts export, or a run folder with "
        f"{MODEL_DIR}/{BEST_CHECKPOINT})"
    )


def network_spec(cfg: PipelineConfig) -> dict[str, Any]:
    """The arguments that rebuild the network; stored in every checkpoint."""
    return {
        "name": cfg.model.name,
        "spatial_dims": cfg.spatial_dims,
        "in_channels": cfg.model.in_channels,
        "out_channels": cfg.model.out_channels,
        "args": dict(cfg.model.args),
    }
