"""User-facing error types: each carries a one-line message that names the file or key at fault."""

from __future__ import annotations


class MedsegError(Exception):
    """Base class for errors caused by the user's input (config, data, model files).

    The CLI prints ``str(error)`` as one line and exits with :attr:`exit_code`.
    """

    exit_code = 2


class ConfigError(MedsegError):
    """A pipeline YAML file or a ``--set`` override is invalid."""


class DataError(MedsegError):
    """A dataset folder, image, mask or split file is missing or malformed."""


class ModelError(MedsegError):
    """A checkpoint or trained-model folder is missing, corrupt or incompatible."""
