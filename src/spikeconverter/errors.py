"""The error a model's unsupported part raises (every stage of the front end raises it)."""


class UnsupportedOperationError(ValueError):
    """The model holds an operation that has no exact spiking form."""
