"""Exceptions whose message is meant for the user as it is (one line, no traceback needed)."""


class ConfigError(ValueError):
    """Invalid campaign or experiment configuration. The message names the key, the value and what is allowed."""


class MeasurementError(RuntimeError):
    """A measurement could not be taken in a way that yields a trustworthy number."""
