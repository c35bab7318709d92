"""The one error a receiver raises for bytes it will not turn into a ``z``."""


class WireFormatError(ValueError):
    """Bytes are not a valid interlingua message for this receiver: truncated, corrupted, foreign,
    from an unsupported version, or produced by a different checkpoint. The message says which."""
