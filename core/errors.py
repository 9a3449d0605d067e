"""The service's error tree: each error carries its HTTP status and a stable code for the one error shape."""

from __future__ import annotations


class LetheError(Exception):
    """Base of every error the service raises on purpose; `detail` tells the caller what to fix."""

    status_code = 500
    code = "internal_error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class InvalidRequestError(LetheError):
    status_code = 422
    code = "invalid_request"


class PayloadTooLargeError(InvalidRequestError):
    status_code = 413
    code = "payload_too_large"


class UnauthorizedError(LetheError):
    """No key, or a key that is unknown or revoked."""

    status_code = 401
    code = "unauthorized"


class ForbiddenError(LetheError):
    """A valid key without the scope the endpoint needs."""

    status_code = 403
    code = "forbidden"


class NotFoundError(LetheError):
    status_code = 404
    code = "not_found"


class ConflictError(LetheError):
    status_code = 409
    code = "conflict"


class NotReadyError(LetheError):
    """The server cannot answer safely right now (model or an active module not loaded): fail closed."""

    status_code = 503
    code = "not_ready"


class QueueUnavailableError(LetheError):
    status_code = 503
    code = "queue_unavailable"
