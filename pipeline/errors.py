"""Errors a person should read: the CLI prints them without a traceback and exits non-zero."""


class RadopsError(Exception):
    """Base class for expected, explained failures of a stage."""


class ConfigError(RadopsError):
    """The configuration or the command line asks for something impossible."""


class InputError(RadopsError):
    """The input (DICOM folder, labels file, upstream artifact) is missing or unusable."""


class ValidationFailed(RadopsError):
    """A data contract failed; the message says where the readable report is."""


class LeakageError(RadopsError):
    """A patient appears in more than one split."""


class PipelineBusy(RadopsError):
    """Another pipeline run holds the lock."""
