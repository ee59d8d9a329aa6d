"""Reading a pipeline file: presets (``extends:``), ``--set`` overrides, ``$MEDSEG_DATA_ROOT``, and the one-line
errors that name the file (or override) and key at fault. The only module that reads raw pipeline YAML.

A pipeline file may ``extends:`` one or more presets (paths relative to the file). Presets are merged
depth-first, then the file itself, then ``--set key.path=value`` overrides. The merged mapping is
validated by :class:`~medseg.config.schema.PipelineConfig` (pydantic, ``extra="forbid"``).
"""

from __future__ import annotations

import copy
import difflib
import logging
import os
import reprlib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from medseg.config.schema import DATA_ROOT_ENV, ModelConfig, PipelineConfig
from medseg.core.errors import ConfigError

log = logging.getLogger(__name__)

Provenance = dict[tuple[str, ...], str]
_SHORT = reprlib.Repr()  # (keyword arguments need Python 3.12)
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxtuple, _SHORT.maxdict, _SHORT.maxstring, _SHORT.maxother = 2, 6, 6, 6, 80, 80


def read_yaml(path: Path) -> dict[str, Any]:
    """Read one YAML mapping with ``yaml.safe_load``; errors name the file and line."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read ({exc.__class__.__name__}: {exc})") from None
    try:
        content = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}:{where}: invalid YAML: {problem}") from None
    if content is None:
        return {}
    if not isinstance(content, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level, got {type(content).__name__}")
    return content


def _merge(base: dict, update: dict, source: str | None, provenance: Provenance, prefix: tuple[str, ...] = ()) -> dict:
    """Deep-merge ``update`` into a copy of ``base``; mappings merge, everything else (and an empty mapping, as in
    ``--set model.args={}``) replaces.

    Records in ``provenance`` which source set each key (``source=None``: already recorded).
    """
    if prefix == ("model",):
        base = _args_follow_the_network(base, update, provenance)
    merged = dict(base)
    for key, value in update.items():
        path = (*prefix, str(key))
        if isinstance(value, dict) and value and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value, source, provenance, path)
        else:
            merged[key] = value
            if source is not None:
                for known in [p for p in provenance if p[: len(path)] == path]:
                    del provenance[known]
        if source is not None:
            provenance[path] = source
    return merged


def _args_follow_the_network(base: dict, update: dict, provenance: Provenance) -> dict:
    """``model.args`` belong to ``model.name``: a layer (a preset, the file, a ``--set``) that names another network
    drops the arguments earlier layers gave the previous one."""
    old, new = base.get("name", ModelConfig.model_fields["name"].default), update.get("name")
    if not isinstance(new, str) or not isinstance(old, str) or new.lower() == old.lower():
        return base
    for path in [p for p in provenance if p[:2] == ("model", "args")]:
        del provenance[path]
    return {key: value for key, value in base.items() if key != "args"}


def _load_with_presets(path: Path, provenance: Provenance, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    resolved = path.resolve()
    if resolved in seen:
        chain = " -> ".join(str(p) for p in (*seen, resolved))
        raise ConfigError(f"{path}: extends itself in a cycle ({chain})")
    raw = read_yaml(path)
    presets = raw.pop("extends", [])
    if isinstance(presets, str):
        presets = [presets]
    if not isinstance(presets, list) or not all(isinstance(p, str) for p in presets):
        raise ConfigError(f"{path}: extends: expected a preset path or a list of paths")
    merged: dict[str, Any] = {}
    for preset in presets:
        preset_path = (path.parent / preset) if not Path(preset).is_absolute() else Path(preset)
        if not preset_path.is_file():
            raise ConfigError(f"{path}: extends: preset {preset_path} not found")
        # the preset's own keys were recorded with their files while it loaded
        merged = _merge(merged, _load_with_presets(preset_path, provenance, (*seen, resolved)), None, provenance)
    return _merge(merged, raw, str(path), provenance)


def parse_override(text: str) -> tuple[tuple[str, ...], Any]:
    """Parse ``key.path=value``; the value is read as YAML (numbers, booleans, lists)."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {text}: expected key.path=value, e.g. training.epochs=5")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        parsed = value
    return tuple(key.split(".")), parsed


def apply_overrides(raw: dict[str, Any], overrides: list[str], provenance: Provenance) -> dict[str, Any]:
    """Apply ``--set`` overrides to a merged raw mapping."""
    for text in overrides:
        path, value = parse_override(text)
        update: dict[str, Any] = value
        for part in reversed(path):
            update = {part: update}
        raw = _merge(raw, update, f"--set {text}", provenance)
    return raw


def _allowed_keys(loc: tuple[str | int, ...]) -> list[str]:
    model: type[BaseModel] | None = PipelineConfig
    for part in loc[:-1]:
        field = model.model_fields.get(str(part)) if model else None
        annotation = field.annotation if field else None
        model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
        if model is None:
            return []
    return list(model.model_fields) if model else []


def _field_path(loc: tuple[str | int, ...]) -> tuple[str, ...]:
    """The config key path of an error location, without pydantic's union-member tags (``bool``, ``literal[...]``);
    a mapping of sections (``data.labels``) keeps its key and goes on into the section."""
    model: type[BaseModel] | None = PipelineConfig
    path: list[str] = []
    values_of: type[BaseModel] | None = None  # the section type of a mapping whose key comes next
    for part in loc:
        if values_of is not None:
            path.append(str(part))
            model, values_of = values_of, None
            continue
        if model is not None:
            field = model.model_fields.get(str(part))
            if field is None:
                path.append(str(part))  # an unknown key: keep it, the error is about it
                break
            annotation = field.annotation
            model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
            values_of = _mapped_section(annotation)
            path.append(str(part))
        elif isinstance(part, int):
            path.append(str(part))  # an index into a list or tuple
        # other parts after a non-model field are union-member tags: dropped
    return tuple(path)


def _mapped_section(annotation: Any) -> type[BaseModel] | None:
    """``S`` for a ``dict[K, S] | None`` field whose values are sections."""
    import typing

    for candidate in (annotation, *typing.get_args(annotation)):
        if typing.get_origin(candidate) is dict:
            value = typing.get_args(candidate)[1]
            if isinstance(value, type) and issubclass(value, BaseModel):
                return value
    return None


def _describe(errors: list[dict[str, Any]], provenance: Provenance, default_source: str) -> str:
    """One line for the first invalid key, merging the alternatives of a union field."""
    first = errors[0]
    loc = _field_path(first["loc"])
    source = default_source
    for depth in range(len(loc), 0, -1):
        if loc[:depth] in provenance:
            source = provenance[loc[:depth]]
            break
    key = ".".join(loc)
    if first["type"] == "extra_forbidden":
        allowed = _allowed_keys(loc)
        hint = difflib.get_close_matches(loc[-1], allowed, n=1)
        suggestion = f"; did you mean {hint[0]!r}?" if hint else f"; allowed keys: {', '.join(allowed)}"
        return f"{source}: {key}: unknown key{suggestion}"
    messages = []
    for error in errors:
        if _field_path(error["loc"]) == loc:
            message = error["msg"].removeprefix("Value error, ")
            if message not in messages:
                messages.append(message)
    got = first.get("input")
    # reprlib: a value built from YAML aliases can be enormous (a "billion laughs" list): show its start only
    shown = "" if isinstance(got, dict) or first["type"] == "missing" else f" (got {_SHORT.repr(got)})"
    return f"{source}: {key + ': ' if key else ''}{', or '.join(messages)}{shown}"


def load_config(path: str | Path, overrides: list[str] | None = None) -> PipelineConfig:
    """Load, merge, override and validate a pipeline file.

    Args:
        path: the pipeline YAML file.
        overrides: ``key.path=value`` strings, applied after the file and its presets.

    Returns:
        The validated configuration, with ``data.root`` filled from ``$MEDSEG_DATA_ROOT`` when unset.

    Raises:
        ConfigError: one line naming the file (or override) and key at fault.
    """
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder; expected a pipeline YAML file")
    provenance: Provenance = {}
    raw = _load_with_presets(path, provenance)
    raw = apply_overrides(raw, overrides or [], provenance)
    raw.setdefault("name", path.stem)
    data = raw.get("data", {})
    if os.environ.get(DATA_ROOT_ENV) and isinstance(data, dict) and data.get("root") is None:
        raw["data"] = {**data, "root": os.environ[DATA_ROOT_ENV]}  # the environment fills an unset data.root
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_describe(exc.errors(), provenance, str(path))) from None


def validation_message(exc: ValueError) -> str:
    """The first problem of a failed validation, without pydantic's echo of the input and its links."""
    errors = exc.errors() if isinstance(exc, ValidationError) else []
    return str(errors[0]["msg"]).removeprefix("Value error, ") if errors else str(exc).splitlines()[0]


def stored_config(raw: Any, source: str | Path) -> PipelineConfig:
    """The configuration saved with a model by this or an earlier medseg. Keys the schema no longer has are dropped
    with one warning naming them all, so a model outlives a schema change; anything else invalid raises.

    Raises:
        ValidationError: the stored configuration is invalid beyond keys that were removed.
    """
    if not isinstance(raw, dict):
        return PipelineConfig.model_validate(raw)  # raises, naming what was found instead of a mapping
    raw, dropped = copy.deepcopy(raw), []
    while True:
        try:
            config = PipelineConfig.model_validate(raw)
            break
        except ValidationError as exc:
            unknown = [_field_path(e["loc"]) for e in exc.errors() if e["type"] == "extra_forbidden"]
            if not unknown or len(unknown) != len(exc.errors()):
                raise
            for path in unknown:
                _drop(raw, path)
                dropped.append(".".join(path))
    if dropped:
        log.warning("%s: ignored stored configuration keys this medseg does not know: %s", source, ", ".join(dropped))
    return config


def _drop(raw: dict[Any, Any], path: tuple[str, ...]) -> None:
    """Remove ``path`` from nested mappings whose keys may be ints (``data.labels``) where the path has strings."""
    section: Any = raw
    for part in path[:-1]:
        section = section[part] if part in section else section[int(part)]
    section.pop(path[-1] if path[-1] in section else int(path[-1]))
