"""The optimizer package's error type, torch-free so that the service can catch it without torch."""


class OptimizerError(ValueError):
    """A bad input to the optimizer package (a config value, a part name, a probability table)."""
