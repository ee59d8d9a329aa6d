"""Behavioural tests for the seeded train/val/test split (medseg.data.splits)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medseg.config.loading import load_config
from medseg.core.errors import ConfigError, DataError
from medseg.data.splits import SPLIT_NAMES, load_or_create_splits, make_splits

IDS = [f"case{i:03d}" for i in range(150)]


def data_error(*args: object) -> str:
    with pytest.raises(DataError) as info:
        load_or_create_splits(*args)  # type: ignore[arg-type]
    message = str(info.value)
    assert "\n" not in message
    return message


# --------------------------------------------------------------------------------------------------
# make_splits
# --------------------------------------------------------------------------------------------------


def test_sizes_from_fractions() -> None:
    splits = make_splits(IDS, 0.15, 0.2, seed=0)
    assert {name: len(ids) for name, ids in splits.items()} == {"train": 98, "val": 22, "test": 30}


def test_disjoint_and_covering_and_sorted() -> None:
    splits = make_splits(IDS, 0.15, 0.2, seed=3)
    assert list(splits) == list(SPLIT_NAMES)
    seen = [i for name in SPLIT_NAMES for i in splits[name]]
    assert len(seen) == len(set(seen)) == len(IDS)
    assert set(seen) == set(IDS)
    for name in SPLIT_NAMES:
        assert splits[name] == sorted(splits[name])
        assert all(type(i) is str for i in splits[name])


def test_deterministic_for_a_seed_and_independent_of_input_order() -> None:
    first = make_splits(IDS, 0.15, 0.2, seed=7)
    assert make_splits(IDS, 0.15, 0.2, seed=7) == first
    assert make_splits(list(reversed(IDS)), 0.15, 0.2, seed=7) == first


def test_different_seed_gives_different_split() -> None:
    a = make_splits(IDS, 0.15, 0.2, seed=1)
    b = make_splits(IDS, 0.15, 0.2, seed=2)
    assert a != b
    assert a["test"] != b["test"]
    assert {k: len(v) for k, v in a.items()} == {k: len(v) for k, v in b.items()}


def test_split_is_shuffled_not_a_prefix() -> None:
    splits = make_splits(IDS, 0.15, 0.2, seed=0)
    assert splits["test"] != IDS[:30]
    assert splits["train"] != IDS[:98]


def test_at_least_one_case_per_split() -> None:
    splits = make_splits(["a", "b", "c"], 0.15, 0.2, seed=0)
    assert sorted(len(v) for v in splits.values()) == [1, 1, 1]
    assert sorted(i for v in splits.values() for i in v) == ["a", "b", "c"]


@pytest.mark.parametrize("ids", [[], ["a"], ["a", "b"]])
def test_fewer_than_three_ids(ids: list[str]) -> None:
    with pytest.raises(DataError) as info:
        make_splits(ids, 0.15, 0.2, seed=0)
    assert str(info.value) == f"need at least 3 cases for a train/val/test split, found {len(ids)}"


def test_fractions_too_large_for_few_cases() -> None:
    with pytest.raises(DataError) as info:
        make_splits(["a", "b", "c", "d"], 0.4, 0.4, seed=0)
    assert str(info.value) == "4 cases are too few for val 2 + test 2 + train >= 1"


def test_every_seed_the_config_accepts_makes_a_split(tmp_path: Path) -> None:
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text("seed: -1\n")
    try:
        cfg = load_config(pipeline)
    except ConfigError as exc:  # rejecting the seed up front is a fine fix as well
        assert "seed" in str(exc)
        return
    splits = make_splits(IDS, 0.15, 0.2, seed=cfg.seed)
    assert sum(len(v) for v in splits.values()) == 150


# --------------------------------------------------------------------------------------------------
# load_or_create_splits
# --------------------------------------------------------------------------------------------------


def test_created_once_then_reused_even_with_another_seed(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "splits" / "ph2.json"
    splits, created = load_or_create_splits(path, IDS, 0.15, 0.2, seed=5)
    assert created is True
    assert splits == make_splits(IDS, 0.15, 0.2, seed=5)
    stored = json.loads(path.read_text(encoding="utf-8"))
    assert stored == {**splits, "seed": 5}
    assert sorted(p.name for p in path.parent.iterdir()) == ["ph2.json"]  # no temporary files left

    text = path.read_text(encoding="utf-8")
    again, created = load_or_create_splits(path, list(reversed(IDS)), 0.3, 0.3, seed=99)
    assert created is False
    assert again == splits
    assert path.read_text(encoding="utf-8") == text  # not rewritten


def test_hand_written_split_file_is_used(tmp_path: Path) -> None:
    path = tmp_path / "splits.json"
    path.write_text(json.dumps({"train": ["c", "a"], "val": ["b"], "test": ["d"]}))
    splits, created = load_or_create_splits(path, ["a", "b", "c", "d"], 0.15, 0.2, seed=0)
    assert created is False
    assert splits == {"train": ["c", "a"], "val": ["b"], "test": ["d"]}


def test_stale_file_with_unknown_ids(tmp_path: Path) -> None:
    path = tmp_path / "splits.json"
    load_or_create_splits(path, IDS, 0.15, 0.2, seed=0)
    assert data_error(path, IDS[:-2], 0.15, 0.2, 0) == (
        f"{path}: split lists 2 id(s) not in the data, e.g. 'case148'; "
        "delete it or set data.split.file to make a new split"
    )


def test_stale_file_missing_ids(tmp_path: Path) -> None:
    path = tmp_path / "splits.json"
    load_or_create_splits(path, IDS, 0.15, 0.2, seed=0)
    assert data_error(path, [*IDS, "new1", "new0"], 0.15, 0.2, 0) == (
        f"{path}: split does not list 2 case(s) of the data, e.g. 'new0'; "
        "delete it or set data.split.file to make a new split"
    )


def test_file_listing_an_id_twice(tmp_path: Path) -> None:
    path = tmp_path / "splits.json"
    path.write_text(json.dumps({"train": ["a", "b"], "val": ["c"], "test": ["a"]}))
    assert data_error(path, ["a", "b", "c"], 0.15, 0.2, 0) == (
        f"{path}: split lists an id twice; delete it or set data.split.file to make a new split"
    )


@pytest.mark.parametrize(
    "content",
    ['{"train": ["a"', "[1, 2, 3]", '{"train": ["a"], "val": ["b"]}', "", '{"train": 1, "val": [], "test": []}'],
    ids=["truncated-json", "list", "no-test", "empty", "not-a-list"],
)
def test_corrupt_split_file(tmp_path: Path, content: str) -> None:
    path = tmp_path / "splits.json"
    path.write_text(content)
    message = data_error(path, ["a", "b", "c"], 0.15, 0.2, 0)
    assert message.startswith(f"{path}: not a valid splits file (")
    assert message.endswith("); delete it to make a new split")
    assert path.read_text() == content  # the user's file is left alone


def test_too_few_ids_writes_no_file(tmp_path: Path) -> None:
    path = tmp_path / "splits.json"
    assert data_error(path, ["a", "b"], 0.15, 0.2, 0) == "need at least 3 cases for a train/val/test split, found 2"
    assert not path.exists()


def test_folds_cover_every_non_test_case_exactly_once(tmp_path: Path) -> None:
    from medseg.data.splits import load_or_create_folds

    ids = [f"c{i:02d}" for i in range(23)]
    path = tmp_path / "splits.json"
    splits, _ = load_or_create_splits(path, ids, 0.15, 0.2, seed=7)
    folds, created = load_or_create_folds(path, splits, 5, seed=7)
    flat = [i for fold in folds for i in fold]
    assert created and sorted(flat) == sorted(splits["train"] + splits["val"]) and len(flat) == len(set(flat))
    assert not set(flat) & set(splits["test"]) and sorted(len(f) for f in folds) == [3, 3, 4, 4, 4]
    stored = json.loads(path.read_text(encoding="utf-8"))
    assert stored["folds"] == folds and stored["test"] == splits["test"]  # the split itself is unchanged
    assert load_or_create_folds(path, splits, 5, seed=99) == (folds, False)  # recorded: reused, whatever the seed


def test_user_supplied_folds_are_validated(tmp_path: Path) -> None:
    from medseg.data.splits import load_or_create_folds

    ids = [f"c{i}" for i in range(10)]
    path = tmp_path / "splits.json"
    splits, _ = load_or_create_splits(path, ids, 0.2, 0.2, seed=1)
    pool = sorted(splits["train"] + splits["val"])
    stored = json.loads(path.read_text(encoding="utf-8"))
    for folds, problem in (
        ([pool[:3], pool[3:]], "lists 2 folds but training.folds is 3"),
        ([pool[:2], pool[2:4], pool[3:]], "lists a case twice"),
        ([pool[:2], pool[2:4], pool[4:-1]], "does not cover the non-test cases"),
    ):
        path.write_text(json.dumps({**stored, "folds": folds}), encoding="utf-8")
        with pytest.raises(DataError, match=problem):
            load_or_create_folds(path, splits, 3, seed=1)
