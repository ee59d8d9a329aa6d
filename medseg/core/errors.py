"""User-facing error types: each carries a one-line message that names the file or key at fault."""

from __future__ import annotations

# what str.splitlines() breaks on, written as escapes: a message quoting user text (a --set value, a CSV cell,
# a file name) stays one line
_LINE_BREAKS = {ord(c): repr(c)[1:-1] for c in "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"}


class MedsegError(Exception):
    """Base class for errors caused by the user's input (config, data, model files).

    The CLI prints ``str(error)`` as one line and exits with :attr:`exit_code`.
    """

    exit_code = 2

    def __init__(self, message: object = "") -> None:
        super().__init__(str(message).translate(_LINE_BREAKS))


class ConfigError(MedsegError):
    """A pipeline YAML file or a ``--set`` override is invalid."""


class DataError(MedsegError):
    """A dataset folder, image, mask or split file is missing or malformed."""


class ModelError(MedsegError):
    """A checkpoint or trained-model folder is missing, corrupt or incompatible."""


def user_error_in(exc: BaseException) -> MedsegError | None:
    """The first medseg error in ``exc``'s chain of causes (MONAI re-raises transform errors as RuntimeError)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, MedsegError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def error_summary(error: BaseException) -> str:
    """One line of an exception's text, for a message that names the file at fault.

    SimpleITK errors span several lines (``Exception thrown in SimpleITK ...: file.cxx:99:``, then
    ``sitk::ERROR: ...`` or ``ITK ERROR: NrrdImageIO(0x...): ...``, then detail): the ``ERROR:`` line is kept.
    Other errors give their first non-empty line, or their type's name when they have no text.
    """
    import re

    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    for i, line in enumerate(lines):
        if "ERROR:" in line:
            message = re.sub(r"^\w+\(0x[0-9a-fA-F]+\):\s*", "", line.split("ERROR:", 1)[1].strip())
            if message.endswith(":") and i + 1 < len(lines):
                detail = re.sub(r"^\[\w+\]\s*", "", lines[-1])
                message = f"{message} {detail}"
            return message
    return lines[0]
