"""Errors a user can act on.

Anything raised as a `MedrayError` reaches the user as one line naming the problem
(the CLI prints it and exits non-zero); anything else is a bug and keeps its traceback.
"""


class MedrayError(Exception):
    """A problem with the user's input, data, configuration or environment."""


class ConfigError(MedrayError):
    """A configuration key or value that is not allowed."""


class StorageError(MedrayError):
    """Storage could not be reached or used (bucket, credentials, endpoint, path)."""


class NotFoundError(MedrayError):
    """A dataset, version, run or model that does not exist."""
