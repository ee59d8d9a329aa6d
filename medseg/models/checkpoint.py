"""Checkpoints: weights plus everything needed to rebuild the network, loaded with ``weights_only=True``.

This module is the one writer and reader of what a checkpoint holds (:class:`Checkpoint`); inference reads the raw
dictionary through :func:`load_checkpoint` (``state_dict``, ``network``, ``config``, ``epoch``).
"""

from __future__ import annotations

import io
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medseg.core.atomic import atomic_write_bytes
from medseg.core.errors import ModelError, error_summary
from medseg.core.layout import BEST_CHECKPOINT, MODEL_DIR, checkpoint_candidates
from medseg.version import __version__


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


@dataclass
class Checkpoint:
    """What a medseg checkpoint holds, written by :meth:`to_dict` and read back by :meth:`from_dict`.

    Every checkpoint: the weights, the arguments that rebuild the network, the config, the epoch and the medseg
    version that wrote it. The kept model (``best.pt``) adds its validation Dice. ``last.pt`` adds what a resumed run
    rebuilds from: the optimiser, the training step's choice (layout, precision), the history and, under
    ``callbacks``, each training component's own ``state_dict()`` by its key (the learning-rate schedule, early
    stopping, the time budget, the best epoch). Checkpoints from before the components saved their own state keep
    them as flat keys; :func:`_callback_states` reads those.
    """

    state_dict: dict[str, Any]
    network: dict[str, Any]
    config: dict[str, Any]
    epoch: int  # last.pt: the epoch to resume after (training.epochs once early stopping has ended the run)
    medseg_version: str = __version__
    val_dice: float | None = None
    optimizer: dict[str, Any] | None = None
    step: dict[str, Any] | None = None
    history: list[dict[str, float]] | None = None
    callbacks: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def of(
        cls, network: nn.Module, spec: dict[str, Any], config: dict[str, Any], epoch: int, **fields: Any
    ) -> Checkpoint:
        """``network``'s weights now, with ``spec`` (the arguments that rebuild it) and the resolved ``config``."""
        return cls(network.state_dict(), dict(spec), config, epoch, **fields)

    def to_dict(self) -> dict[str, Any]:
        """What :func:`save_checkpoint` writes; the optional parts only where set."""
        state: dict[str, Any] = {
            "state_dict": self.state_dict,
            "network": self.network,
            "config": self.config,
            "epoch": self.epoch,
            "medseg_version": self.medseg_version,
        }
        optional = {"val_dice": self.val_dice, "optimizer": self.optimizer, "step": self.step, "history": self.history}
        state.update({key: value for key, value in optional.items() if value is not None})
        if self.callbacks:
            state["callbacks"] = self.callbacks
            # read outside training (benchmarks/model_zoo.py): the epochs a time budget planned
            state["planned_epochs"] = self.callbacks.get(TIME_BUDGET, {}).get("planned_epochs")
        return state

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> Checkpoint:
        return cls(
            state["state_dict"],
            state["network"],
            state["config"],
            state["epoch"],
            state.get("medseg_version", "unknown"),
            state.get("val_dice"),
            state.get("optimizer"),
            state.get("step"),
            state.get("history"),
            _callback_states(state),
        )

    def save(self, path: Path) -> None:
        save_checkpoint(path, self.to_dict())

    @classmethod
    def load(cls, path: Path) -> Checkpoint:
        return cls.from_dict(load_checkpoint(path))


#: the keys under which the training components keep their state (``state_key`` of medseg.training's callbacks)
LR_SCHEDULE, EARLY_STOPPING, TIME_BUDGET, BEST_EPOCH = "lr_schedule", "early_stopping", "time_budget", "best_epoch"


def _callback_states(state: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The components' states of a checkpoint; a ``last.pt`` written before they saved their own (flat keys:
    ``scheduler``, ``best_val_dice``, ``best_epoch``, ``stale_rounds``, ``planned_epochs``) migrated to them."""
    if "callbacks" in state:
        return dict(state["callbacks"])
    states: dict[str, dict[str, Any]] = {}
    if "scheduler" in state:
        states[LR_SCHEDULE] = state["scheduler"]
    if "best_val_dice" in state:
        best = {"best_dice": state["best_val_dice"]}
        states[BEST_EPOCH] = {**best, "best_epoch": state["best_epoch"]}
        states[EARLY_STOPPING] = {**best, "stale_rounds": state["stale_rounds"]}
    if state.get("planned_epochs") is not None:
        states[TIME_BUDGET] = {"planned_epochs": state["planned_epochs"]}
    return states
