"""The training and validation loaders (cached preprocessing, a seeded shard per rank), and the per-epoch seeding
that makes a resumed run replay the same epochs."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from medseg.core.errors import ConfigError
from medseg.data.dataset import PreparedData
from medseg.runtime.distributed import Ranks
from medseg.training.settings import TrainingSettings


def build_loaders(
    settings: TrainingSettings, data: PreparedData, group: Ranks = Ranks(), device: torch.device = torch.device("cpu")
) -> tuple[Any, Any]:
    """The training loader (shuffled, augmented, cached preprocessing; a seeded ``DistributedSampler`` shard per
    rank, ``training.batch_size`` being the global batch) and this rank's share of the validation cases."""
    from monai.data import DataLoader

    from medseg.data.cache import cached_dataset
    from medseg.transforms import train_transforms, validation_transforms

    train_records, val_records = data.subset("train"), data.subset("val")
    if settings.training.fit_on == "train_val":
        train_records = train_records + val_records
    batch = settings.training.batch_size
    if batch % group.world:
        raise ConfigError(
            f"training.batch_size {batch}: the global batch must split evenly over {group.world} processes"
        )
    per_rank = batch // group.world
    transforms = settings.transforms
    train_set = cached_dataset(settings.data, train_records, train_transforms(transforms))
    generator = torch.Generator().manual_seed(settings.seed)
    sampler = None
    if group.distributed:
        from torch.utils.data.distributed import DistributedSampler

        sampler = DistributedSampler(
            train_set, num_replicas=group.world, rank=group.rank, shuffle=True, seed=settings.seed, drop_last=True
        )
    pin = device.type == "cuda"
    train_loader = DataLoader(
        train_set,
        batch_size=per_rank,
        shuffle=sampler is None,
        sampler=sampler,
        drop_last=len(train_records) > batch,
        num_workers=settings.data.data.num_workers,
        generator=generator,
        persistent_workers=settings.data.data.num_workers > 0,
        pin_memory=pin,
    )
    val_loader = DataLoader(
        cached_dataset(settings.data, val_records[group.rank :: group.world], validation_transforms(transforms)),
        batch_size=settings.training.batch_size if settings.spatial_dims == 2 else 1,  # whole volumes differ in size
        num_workers=0,
        pin_memory=pin,
    )
    return train_loader, val_loader


def seed_epoch(seed: int, epoch: int, transform: Any, generator: torch.Generator) -> None:
    """Seed everything random in one epoch from (seed, epoch): shuffling, augmentation, torch.

    A resumed run then replays exactly the epochs an uninterrupted run would have.
    """
    epoch_seed = (seed * 100_003 + epoch) % (2**32)
    generator.manual_seed(epoch_seed)
    torch.manual_seed(epoch_seed)
    np.random.seed(epoch_seed)
    random.seed(epoch_seed)
    transform.set_random_state(seed=epoch_seed)
