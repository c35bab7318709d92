"""The errors that mean "bad input from the user". They share :class:`InterlinguaError`, which the CLI
catches once and prints as one clear line, without a traceback. Each error's message says what is wrong
and what to do instead.

This module imports nothing from the package, so every layer can raise these errors.
"""


class InterlinguaError(Exception):
    """Base of every user-facing error."""


class ConfigError(InterlinguaError, ValueError):
    """A configuration value is missing, unknown or invalid; the message names the key."""


class ModelSpecError(InterlinguaError, ValueError):
    """A model spec that cannot be resolved or loaded; the message says what to pass instead."""


class SquadDataError(InterlinguaError, ValueError):
    """SQuAD data is missing or malformed; the message names the file and what to do."""


class CheckpointError(InterlinguaError, ValueError):
    """A checkpoint is missing, truncated, corrupt, or does not match the models in use."""


class BaselineReuseError(InterlinguaError, ValueError):
    """Stored baseline rows cannot stand in for this evaluation; the message says why."""


class CompareError(InterlinguaError, ValueError):
    """A run folder given to ``compare`` lacks what the comparison reads; the message names it."""


class TrainingDivergedError(InterlinguaError, FloatingPointError):
    """A loss term or the gradient norm became NaN/inf; training stopped and the last good checkpoint is kept."""


class WireFormatError(InterlinguaError, ValueError):
    """Bytes are not a valid interlingua message for this receiver: truncated, corrupted, foreign,
    from an unsupported version, or produced by a different checkpoint. The message says which."""


class MessageInputError(InterlinguaError, ValueError):
    """A prompt or prompt file that cannot be sent: empty, too long, or malformed."""


USER_ERRORS: tuple[type[BaseException], ...] = (InterlinguaError, FileNotFoundError)
"""What the CLI turns into one line on stderr and exit status 2."""
