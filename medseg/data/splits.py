"""Seeded train/val/test split, written once as ``splits.json`` and reused by every later run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from medseg.core.atomic import atomic_write_text
from medseg.core.errors import DataError

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
            splits = {name: list(stored[name]) for name in SPLIT_NAMES}  # "folds", if any: load_or_create_folds
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


def make_folds(ids: list[str], folds: int, seed: int) -> list[list[str]]:
    """Cut ``ids`` (the non-test cases) into ``folds`` seeded folds of near-equal size."""
    if folds < 2:
        raise DataError(f"training.folds={folds}: cross-validation needs at least 2 folds")
    if len(ids) < folds:
        raise DataError(f"{len(ids)} non-test cases are too few for {folds} folds")
    order = np.random.default_rng(seed + 1).permutation(sorted(ids)).tolist()
    return [sorted(order[i::folds]) for i in range(folds)]


def load_or_create_folds(path: Path, splits: Splits, folds: int, seed: int) -> tuple[list[list[str]], bool]:
    """The ``folds`` of ``splits.json``: reused if the file lists them (they must cover every non-test case
    exactly once), else made from the train and validation cases and added to the file (the split stays).

    Returns:
        The folds and whether they were newly created.
    """
    stored = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    pool = sorted((set(splits["train"]) | set(splits["val"])) - set(splits["test"]))
    if "folds" in stored:
        listed = stored["folds"]
        if not isinstance(listed, list) or not all(isinstance(f, list) for f in listed):
            raise DataError(f"{path}: 'folds' must be a list of lists of case ids")
        if len(listed) != folds:
            raise DataError(
                f"{path}: lists {len(listed)} folds but training.folds is {folds}; delete 'folds' from it or set "
                "data.split.file to make new ones"
            )
        flat = [i for fold in listed for i in fold]
        if sorted(flat) != pool:
            detail = "lists a case twice" if len(flat) != len(set(flat)) else "does not cover the non-test cases"
            raise DataError(f"{path}: folds {detail} (every train and validation case exactly once)")
        return [list(f) for f in listed], False
    made = make_folds(pool, folds, seed)
    atomic_write_text(path, json.dumps({**stored, "folds": made}, indent=1) + "\n")
    return made, True
