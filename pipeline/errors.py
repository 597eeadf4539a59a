"""Errors a person should read: the CLI prints them without a traceback and exits non-zero.

Each kind has its own exit code, so callers (the Prefect flows, scripts, CI) decide what to do
from the code alone, never by searching the message. Codes 2-19 mean "the input, the
configuration or the environment is at fault": retrying the same command cannot help.
Anything else (1, a signal, a crash) may be transient.
"""

from __future__ import annotations

# The exit codes of expected, explained failures; 1 stays "unexpected" (a bug, a crash).
PERMANENT_EXIT_CODES = range(2, 20)


class RadopsError(Exception):
    """Base class for expected, explained failures of a stage."""

    exit_code = 2


class ConfigError(RadopsError):
    """The configuration or the command line asks for something impossible."""

    exit_code = 2


class InputError(RadopsError):
    """The input (DICOM folder, labels file, upstream artifact) is missing or unusable."""

    exit_code = 3


class ValidationFailed(RadopsError):
    """A data contract failed; the message says where the readable report is."""

    exit_code = 4


class LeakageError(RadopsError):
    """A patient appears in more than one split."""

    exit_code = 5


class PipelineBusy(RadopsError):
    """Another pipeline run holds the lock."""

    exit_code = 6


class UnsafeOutputError(RadopsError):
    """An output path would replace or delete something radops did not create."""

    exit_code = 7


class SecretError(RadopsError):
    """A secret (pseudonym key, credential, API key) is missing, unsafe or misplaced."""

    exit_code = 8


def is_permanent(exit_code: int) -> bool:
    """True when a command that exited with this code failed for a reason a retry cannot fix."""
    return exit_code in PERMANENT_EXIT_CODES
