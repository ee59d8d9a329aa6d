"""Multi-process training on PyTorch's engines: ``torchrun`` (or ``medseg run --nproc N``, which starts the
processes through torchrun's launcher API) sets ``RANK``/``WORLD_SIZE``; this module joins the process group
(``gloo`` on CPU, ``nccl`` on CUDA) and offers the few collectives training needs. Rank 0 owns every output."""

from __future__ import annotations

import logging
import os
import socket
import sys
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch

from medseg.core.errors import ConfigError, MedsegError

log = logging.getLogger(__name__)
FINAL_WAIT = timedelta(hours=24)  # the other ranks wait this long for rank 0's evaluation and prediction
INIT_TIMEOUT = timedelta(minutes=10)  # a rank that never arrives fails the group instead of hanging it


class DistributedError(MedsegError):
    """A rank failed; the launcher stopped the others."""

    exit_code = 1


@dataclass(frozen=True)
class Ranks:
    """This process's place in the group (one process: rank 0 of 1)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def ranks() -> Ranks:
    """This process's rank, from torchrun's environment."""
    return Ranks(
        int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))
    )


def join(device: torch.device) -> Ranks:
    """Join the process group when started by torchrun (``nccl`` on CUDA, ``gloo`` on CPU); one device per rank."""
    import torch.distributed as dist

    current = ranks()
    if current.distributed and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(current.local_rank)
        dist.init_process_group(backend, timeout=INIT_TIMEOUT)
        if not current.is_main:
            logging.getLogger("medseg").setLevel(logging.WARNING)  # one rank tells the story
        log.info("Joined %d processes (%s)", current.world, backend)
    return current


def rank_device(device: torch.device, current: Ranks) -> torch.device:
    """Each rank's own GPU (``cuda:<local rank>``); the CPU as it is."""
    return torch.device("cuda", current.local_rank) if device.type == "cuda" and current.distributed else device


def broadcast(value: Any, current: Ranks) -> Any:
    """Rank 0's ``value`` on every rank (any picklable object)."""
    if not current.distributed:
        return value
    import torch.distributed as dist

    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def all_sum(values: list[float], current: Ranks, device: torch.device) -> list[float]:
    """Element-wise sums over the ranks."""
    if not current.distributed:
        return values
    import torch.distributed as dist

    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def barrier(current: Ranks) -> None:
    if current.distributed:
        import torch.distributed as dist

        dist.barrier()


def leave(current: Ranks) -> None:
    """Leave the process group together: on gloo (CPU) the ranks first wait for each other (rank 0 evaluates and
    predicts alone after training), because a rank tearing down its gloo connections while another still uses the
    group was seen to abort (SIGABRT, "terminate called without an active exception", once in seven two-process
    runs here, torch 2.13.0+cpu). A rank that is gone already is not waited for."""
    import torch.distributed as dist

    if not (current.distributed and dist.is_initialized()):
        return
    if dist.get_backend() == "gloo":
        try:
            dist.monitored_barrier(timeout=FINAL_WAIT)
        except RuntimeError as exc:  # another rank failed or left: nothing to wait for
            log.debug("Leaving without the other ranks: %s", str(exc).splitlines()[0] if str(exc) else exc)
    dist.destroy_process_group()


def launch(nproc: int, argv: list[str]) -> None:
    """Run ``python -m medseg <argv>`` in ``nproc`` processes on this machine through torchrun's launcher API
    (rendezvous on 127.0.0.1); DistributedError naming the rank that failed (the launcher stops the others)."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if nproc < 1:
        raise ConfigError(f"--nproc {nproc}: give at least 1 process (one per GPU, or a few on a CPU)")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=uuid.uuid4().hex[:12],
        rdzv_backend="c10d",
        rdzv_endpoint=f"127.0.0.1:{port}",
        max_restarts=0,
        monitor_interval=1,
        local_addr="127.0.0.1",
    )
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    try:
        elastic_launch(config, sys.executable)("-m", "medseg", *argv)
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()  # the root cause; the others were stopped after it
        detail = (failure.message if isinstance(failure.message, str) else str(failure.message)).strip()[:300]
        raise DistributedError(
            f"--nproc {nproc}: rank {rank} failed (exit code {failure.exitcode}: {detail or 'see its log'}); "
            "the other ranks were stopped"
        ) from None
