"""Seeded train/val/test split, written once as ``splits.json`` and reused by every later run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from medseg.atomic import atomic_write_text
from medseg.errors import DataError

Splits = dict[str, list[str]]
SPLIT_NAMES = ("train", "val", "test")


def make_splits(ids: list[str], val_fraction: float, test_fraction: float, seed: int, tiny: bool = False) -> Splits:
    """Shuffle ids with ``seed`` and cut them into train/val/test (at least one case each).

    ``tiny`` (2 cases, a working example only): the last case serves as both validation and test case.
    """
    if tiny and len(ids) == 2:
        order = np.random.default_rng(seed).permutation(sorted(ids)).tolist()
        return {"train": order[:1], "val": order[1:], "test": order[1:]}
    if len(ids) < 3:
        raise DataError(f"need at least 3 cases for a train/val/test split, found {len(ids)}")
    order = np.random.default_rng(seed).permutation(sorted(ids))
    n_test = max(1, round(len(ids) * test_fraction))
    n_val = max(1, round(len(ids) * val_fraction))
    if n_test + n_val >= len(ids):
        raise DataError(f"{len(ids)} cases are too few for val {n_val} + test {n_test} + train >= 1")
    test, val, train = order[:n_test], order[n_test : n_test + n_val], order[n_test + n_val :]
    return {"train": sorted(train.tolist()), "val": sorted(val.tolist()), "test": sorted(test.tolist())}


def load_or_create_splits(
    path: Path, ids: list[str], val_fraction: float, test_fraction: float, seed: int, tiny: bool = False
) -> tuple[Splits, bool]:
    """Reuse the split in ``path`` if present (its ids must match the data), else create and write it.

    Returns:
        The split and whether it was newly created.
    """
    if path.is_file():
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
            splits = {name: list(stored[name]) for name in SPLIT_NAMES}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DataError(f"{path}: not a valid splits file ({exc}); delete it to make a new split") from None
        listed = [i for name in SPLIT_NAMES for i in splits[name]]
        missing = sorted(set(listed) - set(ids))
        unlisted = sorted(set(ids) - set(listed))
        duplicated = len(listed) != len(set(listed)) and not (tiny and splits["val"] == splits["test"])
        if missing or unlisted or duplicated:
            detail = (
                f"lists {len(missing)} id(s) not in the data, e.g. {missing[0]!r}"
                if missing
                else f"does not list {len(unlisted)} case(s) of the data, e.g. {unlisted[0]!r}"
                if unlisted
                else "lists an id twice"
            )
            raise DataError(f"{path}: split {detail}; delete it or set data.split.file to make a new split")
        return splits, False
    splits = make_splits(ids, val_fraction, test_fraction, seed, tiny)
    atomic_write_text(path, json.dumps({**splits, "seed": seed}, indent=1) + "\n")
    return splits, True
