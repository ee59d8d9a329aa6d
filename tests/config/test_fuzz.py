"""Property-based tests: the config loader and the datalist builder take any input and either succeed or raise
medseg's own error (a MedsegError subclass) with a non-empty one-line message; never another exception."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image
from pydantic import BaseModel

from medseg.config.loading import load_config
from medseg.config.schema import DATA_ROOT_ENV, PipelineConfig
from medseg.config.settings import data_settings
from medseg.core.errors import MedsegError
from medseg.data.datalist import build_datalist

EXAMPLES = int(os.environ.get("MEDSEG_FUZZ_EXAMPLES", "150"))  # more for a longer hunt
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module", autouse=True)
def _no_data_root() -> Iterator[None]:
    saved = os.environ.pop(DATA_ROOT_ENV, None)
    yield
    if saved is not None:
        os.environ[DATA_ROOT_ENV] = saved


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def assert_clean(exc: BaseException) -> None:
    """A medseg error whose message is one non-empty line; anything else is a bug."""
    assert isinstance(exc, MedsegError), f"{type(exc).__name__}: {exc}"
    message = str(exc)
    assert message.strip(), "empty message"
    assert len(message.splitlines()) == 1, f"message spans lines: {message!r}"
    event(f"rejected: {type(exc).__name__}")


# --------------------------------------------------------------------------------------------------
# The config loader
# --------------------------------------------------------------------------------------------------


def _schema_keys(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every key path of the configuration schema (sections and their fields)."""
    paths = []
    for name, info in model.model_fields.items():
        paths.append((*prefix, name))
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            paths += _schema_keys(annotation, (*prefix, name))
    return paths


SCHEMA_KEYS = _schema_keys(PipelineConfig)
names = st.one_of(
    st.sampled_from(sorted({p[-1] for p in SCHEMA_KEYS} | {"extends"})),
    st.text(min_size=0, max_size=12),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["on", "off", "auto", "unet", "segresnet", "dice_ce", "cosine", "RAS", "[1, 2]", "~", "self.yaml"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.one_of(names, st.integers(-3, 300)), inner, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def schema_documents(draw: st.DrawFn) -> dict[Any, Any]:
    """Mappings that follow the schema's key paths with random values (and some random keys)."""
    document: dict[Any, Any] = {}
    for path in draw(st.lists(st.sampled_from(SCHEMA_KEYS), max_size=8)):
        node = document
        for part in path[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[path[-1]] = draw(values)
    document.update(draw(st.dictionaries(names, values, max_size=3)))
    return document


@st.composite
def mutated_valid_documents(draw: st.DrawFn) -> dict[Any, Any]:
    """A valid resolved configuration with one to three values replaced (deeper validators get reached)."""
    document = PipelineConfig(name="fuzz", stages=["train"]).to_dict()
    for path in draw(st.lists(st.sampled_from(SCHEMA_KEYS), min_size=1, max_size=3)):
        node = document
        for part in path[:-1]:
            node = node.setdefault(part, {}) if isinstance(node.get(part, {}), dict) else {}
        node[path[-1]] = draw(st.one_of(values, st.integers(0, 4), st.sampled_from([[1, 2], {1: 1, 2: 2}, [8, 8, 8]])))
    return document


documents = st.one_of(
    mutated_valid_documents(),
    schema_documents(),
    st.dictionaries(st.one_of(names, st.integers(), st.booleans(), st.none()), values, max_size=6),
    values,
)
raw_texts = st.one_of(
    st.text(max_size=200),
    st.sampled_from(
        [
            "training: [1, 2\n",
            "a: &x [1]\nb: *y\n",
            "!!python/object/apply:os.system ['true']\n",
            "training: !!binary aGVsbG8=\n",
            "? [a, b]\n: c\n",
            "extends: self.yaml\n",
            "extends: [missing.yaml, 3]\n",
            "\t- tab\n",
            "%YAML 9.9\n---\na: 1\n",
            "--- 1\n--- 2\n",
        ]
    ),
)
overrides = st.lists(
    st.one_of(
        st.builds(
            lambda path, value: f"{'.'.join(path)}={value}",
            st.sampled_from(SCHEMA_KEYS),
            st.one_of(st.text(max_size=12), st.sampled_from(["1", "-1", "[1, 2]", "{a: 1}", "null", "1e400", "[1,"])),
        ),
        st.text(max_size=20),
    ),
    max_size=3,
)


def _dump(document: Any) -> str | None:
    try:
        return yaml.safe_dump(document, allow_unicode=True)
    except (yaml.YAMLError, ValueError, TypeError):
        return None


def _load(path: Path, sets: list[str]) -> None:
    try:
        config = load_config(path, sets)
    except Exception as exc:  # noqa: BLE001 - the property: nothing but a clean MedsegError
        assert_clean(exc)
    else:
        assert isinstance(config, PipelineConfig)
        config.to_yaml()  # a loaded configuration serialises
        event("loaded")


@FUZZ
@given(document=documents, sets=overrides)
def test_config_loader_on_random_mappings(scratch: Path, document: Any, sets: list[str]) -> None:
    text = _dump(document)
    if text is None:
        return
    path = scratch / "self.yaml"
    path.write_text(text, encoding="utf-8")
    _load(path, sets)


@FUZZ
@given(text=raw_texts, binary=st.binary(max_size=64), as_bytes=st.booleans(), sets=overrides)
def test_config_loader_on_random_text(scratch: Path, text: str, binary: bytes, as_bytes: bool, sets: list[str]) -> None:
    path = scratch / "self.yaml"
    if as_bytes:
        path.write_bytes(binary)
    else:
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
    _load(path, sets)


# --------------------------------------------------------------------------------------------------
# The datalist builder (2D)
# --------------------------------------------------------------------------------------------------

# file names without control characters (a name with a newline cannot be named on one line)
name_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters="/\x00"), min_size=1, max_size=10
)
extensions = st.sampled_from([".png", ".PNG", ".jpg", ".tif", ".bmp", ".txt", ".csv", ".json", ".nii.gz", ""])
image_modes = st.sampled_from(["L", "RGB", "RGBA", "I;16", "P", "1", "LA", "CMYK", "F"])


def _image_bytes(mode: str, size: tuple[int, int], fmt: str, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).convert(
        "RGB" if mode in ("F", "I;16") else mode
    )
    if mode == "I;16":
        image = Image.fromarray(np.asarray(image.convert("L")).astype(np.uint16) * 257)
    elif mode == "F":
        image = image.convert("F")
    buffer = io.BytesIO()
    try:
        image.save(buffer, format=fmt)
    except (OSError, ValueError, KeyError):
        image.convert("RGB").save(buffer, format="PNG")
    return buffer.getvalue()


@st.composite
def file_contents(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["image", "image", "image", "truncated", "random", "empty", "text"]))
    if kind in ("image", "truncated"):
        fmt = draw(st.sampled_from(["PNG", "PNG", "JPEG", "TIFF", "BMP"]))
        size = (draw(st.integers(1, 12)), draw(st.integers(1, 12)))
        data = _image_bytes(draw(image_modes), size, fmt, draw(st.integers(0, 2**16)))
        return data if kind == "image" else data[: draw(st.integers(0, max(0, len(data) - 1)))]
    if kind == "random":
        return draw(st.binary(max_size=64))
    if kind == "text":
        return draw(st.text(max_size=40)).encode("utf-8", "surrogatepass")
    return b""


@st.composite
def csv_text(draw: st.DrawFn, files: list[str]) -> str:
    columns = draw(st.lists(st.sampled_from(["id", "image", "mask", "label", "other", ""]), max_size=4, unique=True))
    cells = st.one_of(st.sampled_from([*files, "", "../escape.png", "/etc/passwd", "images/nope.png"]), name_text)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(columns)
    for _ in range(draw(st.integers(0, 4))):
        writer.writerow([draw(cells) for _ in columns])
    return buffer.getvalue()


@st.composite
def dataset_json(draw: st.DrawFn, files: list[str]) -> str:
    entry = st.fixed_dictionaries(
        {},
        optional={
            "image": st.one_of(st.sampled_from([*files, "../x.png"]), st.integers(), st.none()),
            "label": st.one_of(st.sampled_from([*files, "nope.png"]), st.lists(st.text(max_size=3), max_size=2)),
        },
    )
    document = draw(
        st.one_of(
            st.fixed_dictionaries({"training": st.lists(entry, max_size=4)}),
            st.fixed_dictionaries({"training": values}),
            values,
        )
    )
    return json.dumps(document) if draw(st.booleans()) else draw(st.text(max_size=30))


@st.composite
def pairs(draw: st.DrawFn) -> dict[str, bytes]:
    """Mostly well-formed image/mask pairs (so that the per-pair checks are reached), some of them off."""
    tree: dict[str, bytes] = {}
    for stem in draw(st.lists(name_text, min_size=1, max_size=4, unique_by=str.lower)):
        size = (draw(st.integers(1, 12)), draw(st.integers(1, 12)))
        image_mode = draw(st.sampled_from(["RGB"] * 8 + ["L", "RGBA", "I;16", "P"]))
        mask_mode = draw(st.sampled_from(["L"] * 8 + ["1", "RGB", "I;16", "P"]))
        mask_size = size if draw(st.integers(0, 9)) else (size[0] + 1, size[1])
        seed = draw(st.integers(0, 2**16))
        tree[f"images/{stem}{draw(st.sampled_from(['.png', '.jpg', '.tif']))}"] = _image_bytes(
            image_mode, size, "PNG", seed
        )
        suffix = draw(st.sampled_from(["", "_segmentation", "_mask", "_lesion"]))
        tree[f"masks/{stem}{suffix}.png"] = _image_bytes(mask_mode, mask_size, "PNG", seed + 1)
    return tree


@st.composite
def folders(draw: st.DrawFn) -> dict[str, bytes]:
    """Relative path -> content: images/ and masks/ with random files, some paired, plus CSV or JSON layouts."""
    paired = draw(st.booleans())
    tree: dict[str, bytes] = draw(pairs()) if paired else {}
    stems = draw(st.lists(name_text, max_size=1 if paired else 5, unique_by=str.lower))
    for stem in stems:
        extension = draw(extensions)
        folder = draw(st.sampled_from(["images", "images", "masks", ""]))
        tree[f"{folder}/{stem}{extension}".lstrip("/")] = draw(file_contents())
        if draw(st.booleans()):  # a mask for it, maybe with a suffix
            suffix = draw(st.sampled_from(["", "_segmentation", "_mask", "_x"]))
            tree[f"masks/{stem}{suffix}{draw(extensions)}"] = draw(file_contents())
    files = sorted(tree)
    if draw(st.integers(0, 3)) == 0:
        tree["pairs.csv"] = draw(csv_text(files)).encode("utf-8", "surrogatepass")
    if draw(st.integers(0, 3)) == 0:
        tree["dataset.json"] = draw(dataset_json(files)).encode("utf-8", "surrogatepass")
    return tree


def _write_tree(root: Path, tree: dict[str, bytes]) -> None:
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    for relative, content in tree.items():
        path = root / relative
        if not path.name or path.name in {".", ".."}:
            continue
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
        except (IsADirectoryError, NotADirectoryError, FileExistsError, OSError):
            continue  # names that collide with a folder, or that this file system refuses: not written


@FUZZ
@given(
    tree=folders(),
    layout=st.sampled_from(["auto", "auto", "folder", "csv", "msd"]),
    in_channels=st.sampled_from([3, 3, 1, 4]),
    suffixes=st.sampled_from([["", "_segmentation", "_mask", "_lesion"], [""], ["_mask", "_mask"]]),
)
def test_datalist_builder_on_random_folders(
    scratch: Path, tree: dict[str, bytes], layout: str, in_channels: int, suffixes: list[str]
) -> None:
    root = scratch / "dataset"
    _write_tree(root, tree)
    data = {"layout": layout, "mask_suffixes": suffixes}
    cfg = PipelineConfig(name="fuzz", model={"in_channels": in_channels}, data=data)
    try:
        datalist = build_datalist(data_settings(cfg), root)
    except Exception as exc:  # noqa: BLE001 - the property: nothing but a clean MedsegError
        assert_clean(exc)
    else:
        records, report = datalist.records, datalist.report
        assert report.cases == len(records) >= 1
        event("loaded")
        for record in records:
            assert Path(record["image"]).is_file() and Path(record["label"]).is_file()
            assert "/" not in record["id"] and record["id"] not in {"", ".", ".."}
