"""Errors that the CLI turns into one-line messages and distinct exit codes.

Exit codes (documented in docs/operations.md):
  0 ok, 2 bad input, 3 a validation or accuracy gate failed, 4 training diverged,
  130 / 143 interrupted by SIGINT / SIGTERM.
"""


class EdgekdError(Exception):
    """Base class: anything the user can act on. The message is one line."""

    exit_code = 1


class BadInput(EdgekdError):
    """Bad input (exit code 2): the one-line message says what and where."""

    exit_code = 2


class ConfigError(BadInput):
    """A recipe, flag or argument is wrong."""


class DataError(BadInput):
    """A dataset is missing or malformed."""


class ModelFileError(BadInput):
    """A weights or ONNX file cannot be read safely."""


class ProviderFailed(ModelFileError):
    """ONNX Runtime could not load or run a model on the provider asked for (an op or type
    it lacks, an option it refuses): when several results are compared, a failed result."""


class ProviderUnavailable(BadInput):
    """An ONNX Runtime execution provider was asked for but is not installed."""


class MissingDependency(BadInput):
    """A command needs packages of an extra that is not installed (edgekd compress and
    export without `edgekd[train]`, e.g. on a device): the message says what to install."""


class GateFailed(EdgekdError):
    """A validation or accuracy gate failed (for example ONNX parity vs PyTorch)."""

    exit_code = 3


class ExportMismatch(GateFailed):
    """ONNX outputs differ from PyTorch beyond the tolerance."""


class TrainingDiverged(EdgekdError):
    """The loss became NaN or infinite."""

    exit_code = 4


class AccuracyBudgetExceeded(GateFailed):
    """int8 loses more top-1 than quantize.max_drop, even with its most sensitive nodes in float."""


def first_line(exc: BaseException) -> str:
    """An exception's message as one short line (at most 200 characters), for one-line
    errors: a library's multi-line or huge message must not flood the terminal."""
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:200]


def joined_lines(exc: BaseException) -> str:
    """An exception's message with its lines joined into one (at most 200 characters): for
    image decoders, whose cause is often on a later line."""
    return (" ".join(str(exc).split()) or type(exc).__name__)[:200]
