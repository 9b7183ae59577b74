"""One exception hierarchy, one table to HTTP status (Triton keeps a single map too).

Code anywhere raises the exception that names what went wrong; only
``status_of`` decides what the client sees.
"""

from __future__ import annotations

from nosclient.codec import TensorError


class NosdError(Exception):
    """Base of every error nosd reports to a client. The message says what to fix."""


class BadRequest(NosdError):
    """Malformed body, unknown input, wrong datatype/shape."""


class ModelNotFound(NosdError):
    """No model with that id in the hub."""


class PayloadTooLarge(NosdError):
    """Body over ``--max-body-mb``."""


class NotReady(NosdError):
    """Server not ready (starting or draining)."""


class WorkerUnavailable(NosdError):
    """The worker died or is restarting: retry later."""


class Overloaded(NosdError):
    """The model's queue is at ``max_queue_size``: answered at once, never queued without bound."""

    def __init__(self, message: str, retry_after_s: float = 1.0):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DeadlineExceeded(NosdError):
    """The request's ``timeout_ms`` passed while it was queued; it was dropped before compute."""


class Unauthorized(NosdError):
    """Missing or wrong bearer token."""


class InsufficientResources(NosdError):
    """Ray cannot place the replicas: not enough free CPU/GPU in the cluster."""


class MemoryBudgetExceeded(NosdError):
    """The model (or its replicas) cannot fit the memory budget even with everything else evicted."""


class ModelFailure(NosdError):
    """The model raised while loading or computing."""


class WeightsNotFound(ModelFailure):
    """Weights file missing and could not be fetched."""


_STATUS: dict[type[Exception], int] = {
    TensorError: 400,
    BadRequest: 400,
    ModelNotFound: 404,
    PayloadTooLarge: 413,
    Unauthorized: 401,
    NotReady: 503,
    Overloaded: 503,
    DeadlineExceeded: 504,
    WorkerUnavailable: 503,
    InsufficientResources: 503,
    MemoryBudgetExceeded: 507,
    ModelFailure: 500,
    NosdError: 500,
}


def status_of(exc: BaseException) -> int:
    """The HTTP status of an exception: the most specific entry of the table, 500 for anything else."""
    for cls in type(exc).__mro__:
        if cls in _STATUS:
            return _STATUS[cls]
    return 500


def headers_of(exc: BaseException) -> dict[str, str]:
    """What a status promises in headers: every 503 says when to retry (Triton and RFC 9110 clients read
    ``Retry-After``); a 401 says which scheme it wants."""
    status = status_of(exc)
    if status == 503:
        return {"Retry-After": str(max(1, round(getattr(exc, "retry_after_s", 1.0))))}
    if status == 401:
        return {"WWW-Authenticate": "Bearer"}
    return {}
