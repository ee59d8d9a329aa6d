"""The hooks of the training loop (nnU-Net's ``on_*`` methods, Lightning's callbacks): :class:`Callback` and the list
that calls them in order, :class:`Callbacks`, which also saves and restores their states and broadcasts the stop
decision; :class:`FitLoop`, what they see of a running fit."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from medseg.runtime.distributed import Ranks, broadcast

if TYPE_CHECKING:
    import torch
    from torch import nn

    from medseg.core.layout import ModelLayout
    from medseg.models.checkpoint import Checkpoint
    from medseg.tracking.tracker import Tracker
    from medseg.training.settings import TrainingSettings

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class TrainingState:
    """Where the loop stands: its history and the last finished epoch (saved in ``last.pt``, restored by
    ``--resume``, beside each callback's own state)."""

    history: list[dict[str, float]] = field(default_factory=list)
    epoch: int = 0


class TrainerParts(Protocol):
    """What the hooks use of the trainer (:class:`medseg.training.trainer.Trainer`)."""

    settings: TrainingSettings
    group: Ranks
    network: nn.Module
    optimizer: torch.optim.Optimizer
    model: ModelLayout
    callbacks: Callbacks
    steps_per_epoch: int

    @property
    def step_choice(self) -> dict[str, Any]: ...

    def validate(self) -> float: ...

    def checkpoint(self, epoch: int, **fields: Any) -> Checkpoint: ...


@dataclass
class FitLoop:
    """A running :meth:`Trainer.fit <medseg.training.trainer.Trainer.fit>`: the trainer, the tracker, where training
    stands and the epoch under way (its number and its row of the history)."""

    trainer: TrainerParts
    tracker: Tracker
    progress: TrainingState
    started: float  # perf_counter when the train stage started (this process)
    epoch: int = 0  # the epoch under way (the last finished one between epochs)
    planned: int = 0  # the epochs to train (training.epochs, or those that fit training.max_minutes)
    row: dict[str, float] = field(default_factory=dict)
    finished: bool = False  # nothing is left to train: last.pt says training.epochs, a resumed run stays stopped
    _contexts: ExitStack = field(default_factory=ExitStack)

    def __post_init__(self) -> None:
        self.epoch = self.progress.epoch
        self.planned = self.trainer.settings.training.epochs

    def begin_epoch(self) -> None:
        self.epoch += 1
        self.row = {"epoch": self.epoch}

    def enter(self, context: AbstractContextManager[T]) -> T:
        """Enter ``context`` until the loop ends (normally or not), e.g. a progress bar."""
        return self._contexts.enter_context(context)


class Callback:
    """A hook of the training loop: every method does nothing unless overridden. A callback with a ``state_key``
    saves its state in ``last.pt`` (:meth:`state_dict`) and gets it back on a resume (:meth:`load_state_dict`)."""

    state_key: str | None = None

    def on_train_start(self, loop: FitLoop) -> None: ...

    def on_epoch_start(self, loop: FitLoop) -> None: ...

    def on_train_batch_end(self, loop: FitLoop, loss: float) -> None: ...

    def on_train_epoch_end(self, loop: FitLoop) -> None:
        """After the epoch's training pass, before its validation."""

    def should_validate(self, loop: FitLoop) -> bool:
        return False

    def on_validation_end(self, loop: FitLoop) -> None:
        """``loop.row["val_dice"]`` is this epoch's validation Dice."""

    def on_epoch_end(self, loop: FitLoop) -> None: ...

    def stop_reason(self, loop: FitLoop) -> tuple[Any, ...] | None:
        """Why training should stop after this epoch (a log message and its arguments), or None."""
        return None

    def on_train_end(self, loop: FitLoop) -> None:
        """After the last epoch (not after an error)."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class Callbacks:
    """Callbacks called in order, each hook on every one; their states by key; rank 0's stop decision."""

    def __init__(self, callbacks: Sequence[Callback], group: Ranks = Ranks()) -> None:
        self.callbacks, self.group = list(callbacks), group
        keys = [c.state_key for c in self.callbacks if c.state_key]
        if len(keys) != len(set(keys)):
            raise ValueError(f"two callbacks save their state under one key: {keys}")

    def __iter__(self) -> Iterator[Callback]:
        return iter(self.callbacks)

    def find(self, kind: type[T]) -> T:
        """The callback of type ``kind``."""
        return next(c for c in self.callbacks if isinstance(c, kind))

    @contextmanager
    def running(self, loop: FitLoop) -> Iterator[None]:
        """``on_train_start``, then the loop; what the hooks entered (:meth:`FitLoop.enter`) is closed on leaving."""
        with loop._contexts:
            for callback in self:
                callback.on_train_start(loop)
            yield

    def on_epoch_start(self, loop: FitLoop) -> None:
        for callback in self:
            callback.on_epoch_start(loop)

    def on_train_batch_end(self, loop: FitLoop, loss: float) -> None:
        for callback in self:
            callback.on_train_batch_end(loop, loss)

    def on_train_epoch_end(self, loop: FitLoop) -> None:
        for callback in self:
            callback.on_train_epoch_end(loop)

    def should_validate(self, loop: FitLoop) -> bool:
        return any([callback.should_validate(loop) for callback in self])

    def on_validation_end(self, loop: FitLoop) -> None:
        for callback in self:
            callback.on_validation_end(loop)

    def on_epoch_end(self, loop: FitLoop) -> None:
        for callback in self:
            callback.on_epoch_end(loop)

    def should_stop(self, loop: FitLoop) -> bool:
        """Whether to stop after this epoch: rank 0 decides (its clock for a time budget), every rank follows; the
        first callback's reason is logged."""
        reasons = [reason for callback in self if (reason := callback.stop_reason(loop))]
        reason = broadcast(reasons[0] if reasons else None, self.group)
        if reason:
            log.info(*reason)
        return bool(reason)

    def on_train_end(self, loop: FitLoop) -> None:
        for callback in self:
            callback.on_train_end(loop)

    def state_dict(self) -> dict[str, dict[str, Any]]:
        return {c.state_key: c.state_dict() for c in self if c.state_key}

    def load_state_dict(self, states: dict[str, dict[str, Any]]) -> None:
        """Each callback's saved state; one with none saved keeps its fresh state."""
        for callback in self:
            if callback.state_key in states:
                callback.load_state_dict(states[callback.state_key])
