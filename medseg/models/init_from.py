"""Starting weights for training (``model.init_from``): the tensors of an earlier run, a ``.pt`` checkpoint, a
TorchScript export or a MONAI bundle, loaded by name and shape into a freshly built network.

Weights only: checkpoints are read with ``torch.load(weights_only=True)``, a TorchScript file for its ``state_dict``,
and a bundle's ``models/model.pt`` alone (its configs are never read, let alone evaluated). DistributedDataParallel's
``module.`` and ``torch.compile``'s ``_orig_mod.`` prefixes are stripped. Every tensor of the network whose name and
shape the source has is loaded; the others (e.g. an output head for other labels) keep their fresh initialisation.
"""

from __future__ import annotations

import json
import logging
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medseg.core.errors import ModelError, error_summary
from medseg.core.layout import ENSEMBLE_FILE, ModelLayout, RunLayout

log = logging.getLogger(__name__)

OPTION = "model.init_from"
WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DistributedDataParallel, torch.compile
BUNDLE_WEIGHTS = Path("models") / "model.pt"  # MONAI's bundle layout
BUNDLE_TORCHSCRIPT = Path("models") / "model.ts"
#: what the source's preprocessing is compared on (dotted keys of a stored configuration); ``2d``: on 2D models only
PREPROCESSING_KEYS = {
    "model.in_channels": False,
    "preprocessing.spacing": False,
    "preprocessing.intensity.kind": False,
    "preprocessing.intensity.channels": False,
    "preprocessing.spatial_size": True,
}
EXPECTED = "a run folder, a .pt checkpoint, a .ts export or a MONAI bundle folder with models/model.pt or .ts"


@dataclass(frozen=True)
class SourceWeights:
    """What a source holds: its tensors (wrapper prefixes stripped) and, where it carries them (a medseg checkpoint or
    export), the network it was built as and the configuration it was trained with."""

    source: str
    path: Path
    tensors: dict[str, torch.Tensor]
    network: str | None = None
    config: dict[str, Any] | None = None


@dataclass(frozen=True)
class WeightMatch:
    """Which of the network's tensors a source fills (same name and shape) and which keep their fresh values."""

    source: str
    path: Path
    kept: tuple[str, ...]
    reinitialised: tuple[str, ...]
    differences: tuple[str, ...] = field(default=())  # the source's preprocessing against this pipeline's

    def params(self) -> dict[str, Any]:
        """The MLflow params of the train run (``model.init_from`` itself is logged with the configuration)."""
        return {
            "init_from.path": str(self.path),
            "init_from.tensors_kept": len(self.kept),
            "init_from.tensors_reinitialised": len(self.reinitialised),
        }


def read_source(source: str | Path) -> SourceWeights:
    """The weights behind ``source`` (a run folder, ``model/`` folder, ``.pt``, ``.ts``, MONAI bundle folder or MLflow
    model URI); ModelError, naming the option, if it does not exist or holds no model."""
    from medseg.infer.sources import MODEL_URI_SCHEMES

    text = str(source)
    if text.startswith(MODEL_URI_SCHEMES):
        from medseg.tracking.tracker import download_model

        path = download_model(text)
    else:
        path = _weights_file(Path(text), text)
    if path.suffix == ".ts":
        return _from_torchscript(path, text)
    return _from_torch_file(path, text)


def _weights_file(path: Path, text: str) -> Path:
    """The file holding the weights of a run folder, ``model/`` folder, bundle folder or file."""
    if not path.exists():
        raise ModelError(f"{OPTION}: {text} does not exist")
    if path.is_file():
        return path
    for weights in (BUNDLE_WEIGHTS, BUNDLE_TORCHSCRIPT):  # a bundle's state dict, else its TorchScript (MONAI Deploy)
        if (path / weights).is_file():
            return path / weights
    for candidate in (ModelLayout(path).best, RunLayout(path).model.best):
        if candidate.is_file():
            return candidate
    if ModelLayout(path).ensemble.is_file() or RunLayout(path).model.ensemble.is_file():
        raise ModelError(
            f"{OPTION}: {text} is a cross-validated run ({ENSEMBLE_FILE}); start from one fold's checkpoint, "
            "e.g. folds/fold_0/model/best.pt"
        )
    raise ModelError(f"{OPTION}: {text} is not a model (expected {EXPECTED})")


def _from_torch_file(path: Path, text: str) -> SourceWeights:
    """A medseg checkpoint, a plain ``state_dict`` or one under ``state_dict`` / ``model`` (MONAI's CheckpointSaver)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any other file fails in its own way: unpickling errors, KeyError on a stray opcode
        detail = "not a PyTorch file" if isinstance(exc, (KeyError, pickle.UnpicklingError)) else error_summary(exc)
        raise ModelError(f"{OPTION}: {text} is not a model (expected {EXPECTED}; {detail[:120]})") from None
    network, config = None, None
    if isinstance(state, dict) and isinstance(state.get("network"), dict) and "state_dict" in state:
        network, config = state["network"].get("name"), state.get("config")
    if isinstance(state, dict):
        for key in ("state_dict", "model"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    return SourceWeights(text, path, _tensors(state, text), network, config if isinstance(config, dict) else None)


def _from_torchscript(path: Path, text: str) -> SourceWeights:
    """A TorchScript file's ``state_dict`` and, from a ``medseg export``, the network and configuration."""
    from medseg.infer.backends import TORCHSCRIPT_EXTRA

    extra = {TORCHSCRIPT_EXTRA: ""}
    try:
        scripted = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except (RuntimeError, zipfile.BadZipFile, ValueError) as exc:
        raise ModelError(
            f"{OPTION}: {text} is not a model (not a readable TorchScript file: {error_summary(exc)[:120]})"
        ) from None
    metadata = json.loads(extra[TORCHSCRIPT_EXTRA]) if extra[TORCHSCRIPT_EXTRA] else {}
    network = (metadata.get("network") or {}).get("name")
    return SourceWeights(text, path, _tensors(scripted.state_dict(), text), network, metadata.get("config"))


def _tensors(state: Any, text: str) -> dict[str, torch.Tensor]:
    """The tensors of a state dict, wrapper prefixes stripped; ModelError if there are none."""
    tensors = {}
    if isinstance(state, dict):
        for name, value in state.items():
            if isinstance(name, str) and isinstance(value, torch.Tensor):
                while name.startswith(WRAPPER_PREFIXES):
                    name = name.split(".", 1)[1]
                tensors[name] = value
    if not tensors:
        raise ModelError(f"{OPTION}: {text} is not a model (it holds no weights; expected {EXPECTED})")
    return tensors


def match_weights(network: nn.Module, weights: SourceWeights, name: str) -> WeightMatch:
    """Which of ``network``'s tensors ``weights`` fills; ModelError if the source is another network type (``name``:
    the registry name this pipeline builds) or fills none."""
    if weights.network is not None and weights.network != name:
        raise ModelError(f"{OPTION}: {weights.source} is a {weights.network}, this pipeline builds a {name}")
    own = network.state_dict()
    kept = tuple(k for k, v in own.items() if k in weights.tensors and weights.tensors[k].shape == v.shape)
    if not kept:
        raise ModelError(
            f"{OPTION}: no tensor of {weights.source} fits this pipeline's {name} (none has the same name and shape)"
        )
    fitted = set(kept)
    return WeightMatch(weights.source, weights.path, kept, tuple(k for k in own if k not in fitted))


def check_init_from(source: str, spec: dict[str, Any]) -> WeightMatch:
    """What ``source`` would fill of the network ``spec`` builds (:func:`medseg.config.settings.network_spec`), checked
    before a run writes anything; ModelError for a source that is missing, no model, another type or fits nothing."""
    from medseg.models.registry import build_network

    return match_weights(build_network(**spec), read_source(source), spec["name"])


def initialise(network: nn.Module, source: str, name: str, stored: dict[str, Any]) -> WeightMatch:
    """Load the tensors of ``source`` that fit into ``network`` (built as registry ``name``); one warning line when the
    source's preprocessing differs from ``stored`` (this pipeline's resolved configuration)."""
    weights = read_source(source)
    match = match_weights(network, weights, name)
    network.load_state_dict({k: weights.tensors[k] for k in match.kept}, strict=False)
    differences = preprocessing_differences(weights.config, stored)
    if differences:
        log.warning(
            "%s: %s was trained with other preprocessing (%s); its weights may fit these images less well",
            OPTION,
            source,
            "; ".join(differences),
        )
    log.info(
        "%s: %d tensors from %s, %d re-initialised%s",
        OPTION,
        len(match.kept),
        match.path,
        len(match.reinitialised),
        f" ({', '.join(match.reinitialised[:4])}{', ...' if len(match.reinitialised) > 4 else ''})"
        if match.reinitialised
        else "",
    )
    return WeightMatch(match.source, match.path, match.kept, match.reinitialised, tuple(differences))


def preprocessing_differences(theirs: dict[str, Any] | None, ours: dict[str, Any]) -> list[str]:
    """``key theirs -> ours`` for each :data:`PREPROCESSING_KEYS` value the two configurations set differently (none
    where the source carries no configuration: a plain state dict, a bundle)."""
    if not theirs:
        return []
    two_d = _value(ours, "spatial_dims") == 2
    found = []
    for key, only_2d in PREPROCESSING_KEYS.items():
        if only_2d and not two_d:
            continue
        before, now = _value(theirs, key), _value(ours, key)
        if before is not None and before != now:
            found.append(f"{key} {before} -> {now}")
    return found


def _value(config: dict[str, Any], key: str) -> Any:
    """A dotted key's value in a stored configuration (lists as tuples), None where unset."""
    value: Any = config
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return tuple(value) if isinstance(value, list) else value
