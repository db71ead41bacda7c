"""The errors a user reads: every one names what is wrong and how to fix it."""

from __future__ import annotations


class UserError(ValueError):
    """Something the user can fix (a setting, a file, the data): the message says what and how,
    and the entry points print it as one line, without a traceback."""


class ConfigError(UserError):
    """A configuration value is out of range or inconsistent; the message names the config key."""


class ArgumentError(UserError):
    """A library argument is out of range; ``argument`` is its name, which is also the config key
    inside the group that builds the object (see ``cappuccino.config.build``)."""

    def __init__(self, argument: str, message: str) -> None:
        super().__init__(f"{argument}: {message}")
        self.argument = argument
        self.message = message


def require(condition: bool, argument: str, message: str) -> None:
    """Raise ``ArgumentError(argument, message)`` unless ``condition``."""
    if not condition:
        raise ArgumentError(argument, message)
