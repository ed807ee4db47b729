"""Errors a user can act on. The CLI prints them as one line and exits non-zero, never a traceback."""


class UserError(Exception):
    """Something the user can fix: bad input, missing model, unreachable camera."""


class ConfigError(UserError):
    """The configuration is invalid; the message names the key."""


class ModelMissingError(UserError):
    """A model is not in the models directory; the message names the command that fetches it."""
