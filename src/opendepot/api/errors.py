"""The one place where domain errors become Connect codes."""

from __future__ import annotations

from connectrpc.code import Code
from connectrpc.errors import ConnectError

from opendepot import errors

CODES: dict[type[errors.DomainError], Code] = {
    errors.InvalidArgument: Code.INVALID_ARGUMENT,
    errors.NotFound: Code.NOT_FOUND,
    errors.AlreadyExists: Code.ALREADY_EXISTS,
    errors.Unauthenticated: Code.UNAUTHENTICATED,
    errors.PermissionDenied: Code.PERMISSION_DENIED,
    errors.FailedPrecondition: Code.FAILED_PRECONDITION,
    errors.ResourceExhausted: Code.RESOURCE_EXHAUSTED,
    errors.Unavailable: Code.UNAVAILABLE,
}

INTERNAL_MESSAGE = "internal error; the server log has the details"


def to_connect_error(error: Exception, method: str) -> tuple[ConnectError, bool]:
    """Returns the error to send and whether it was unexpected (a bug, to be logged with its traceback)."""
    if isinstance(error, errors.DomainError):
        return ConnectError(CODES[type(error)], error.message), False
    if isinstance(error, ConnectError):
        if error.code == Code.UNIMPLEMENTED and error.message == "Not implemented":
            # The generated default: say which method, so a user knows what they hit.
            return ConnectError(Code.UNIMPLEMENTED, f"{method} is not implemented by opendepot yet"), False
        return error, False
    return ConnectError(Code.INTERNAL, INTERNAL_MESSAGE), True
