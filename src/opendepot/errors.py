"""Domain errors. The API layer maps each class to one Connect code, in one place (api/errors.py)."""

from __future__ import annotations


class DomainError(Exception):
    """Base class: the message is safe to show to the caller."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(DomainError):
    """The request is malformed; the message names the field."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


class NotFound(DomainError):
    pass


class AlreadyExists(DomainError):
    pass


class Unauthenticated(DomainError):
    pass


class PermissionDenied(DomainError):
    pass


class FailedPrecondition(DomainError):
    pass


class ResourceExhausted(DomainError):
    pass


class Unavailable(DomainError):
    """A component the server depends on (the registry, a builder) did not answer; retrying may work."""
