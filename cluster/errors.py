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


class InputError(ValueError):
    """A request the model cannot take; the API answers 422 with this message, which
    names the field and the problem and never the submitted value (it may be patient data).

    It lives in this bottom layer because the modality modules (`medray.train.modalities`)
    raise it while decoding requests and serving's torch-free ingress catches it."""
