"""One error type for everything a user can fix.

The CLI prints `EdgeoptError` as a single line (what went wrong, then how to fix it) and exits non-zero;
any other exception is a bug in edgeopt and keeps its traceback.
"""

from __future__ import annotations


class EdgeoptError(Exception):
    """A failure caused by input the user controls: a name, a file, a spec, a device."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(f"{message} ({hint})" if hint else message)


def first_line(e: BaseException, limit: int = 300) -> str:
    """The first line of a library's exception message (its type's name when it has none), cut to `limit`: how a
    converter's failure becomes part of one error line."""
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:limit]


def last_line(e: BaseException, limit: int = 300) -> str:
    """As `first_line`, for messages whose last line is the one that matters (TVM's C++ errors: a backtrace,
    then the check that failed)."""
    text = str(e).strip().splitlines()
    return (text[-1] if text else type(e).__name__)[:limit]


class BundleError(EdgeoptError):
    """A bundle folder that is missing, incomplete or altered."""


class SpecError(EdgeoptError):
    """A pass pipeline, target or option spec that cannot be parsed."""


class CheckpointError(EdgeoptError):
    """A checkpoint file that is missing, corrupt or for another variant."""


class DeviceError(EdgeoptError):
    """A device that cannot be reached, refuses us, or fails while running."""


class DeviceUnreachable(DeviceError):
    """A device that cannot be reached at all (connection refused, timed out, gone mid-run): jobs still queued
    for it are not worth trying in this run."""


class AlreadyStored(EdgeoptError):
    """A measurement with this (bundle, device, protocol) key is already in the results database."""


class Contaminated(EdgeoptError):
    """A measurement that other processes disturbed (edgeopt.contention), refused under a strict protocol."""
