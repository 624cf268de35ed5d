"""Exceptions: what producers see (`ConveyorError` and its subclasses) and
what handlers raise or receive (`Reject`, `SoftTimeLimitExceeded`,
`Terminated`)."""

from __future__ import annotations

from typing import Any

import grpc

__all__ = [
    "ConveyorError",
    "PayloadError",
    "ProtocolError",
    "MaxRetriesExceededError",
    "PermissionDenied",
    "Reject",
    "Retry",
    "SoftTimeLimitExceeded",
    "TaskCancelled",
    "TaskExpired",
    "TaskFailed",
    "TaskNotSucceeded",
    "TaskTimeout",
    "Terminated",
    "Unauthenticated",
    "error_class",
]


class ConveyorError(Exception):
    """Anything that went wrong talking to Conveyor.

    `code` is the gRPC status code (a `grpc.StatusCode`) when the error came
    from a call, e.g. `INVALID_ARGUMENT` for a bad submission or `NOT_FOUND`
    for an unknown task id; `None` for errors that are not a call's status
    (a task that failed, a value that cannot be encoded). `details` is the
    server's message. `service` ("submission", "results", "dispatch",
    "scheduling") and `address` say which service the call was for and
    where it went, when known.

    An UNIMPLEMENTED call (a process that does not serve the call's role)
    says, after the server's message, which address was called and how to
    point that service elsewhere (`endpoints=` or its environment variable).

    Some codes have their own subclass: `TaskTimeout` (DEADLINE_EXCEEDED),
    `Unauthenticated` (UNAUTHENTICATED) and `PermissionDenied`
    (PERMISSION_DENIED).
    """

    def __init__(self, message: str, *, code: grpc.StatusCode | None = None, details: str = ""):
        super().__init__(message)
        self.code = code
        self.details = details
        self.service: str | None = None
        self.address: str | None = None

    @classmethod
    def from_rpc(
        cls, error: grpc.RpcError, what: str = "", *, service: str | None = None, address: str | None = None
    ) -> ConveyorError:
        """The exception for a failed call: `TaskTimeout` for DEADLINE_EXCEEDED,
        `Unauthenticated` for UNAUTHENTICATED, `PermissionDenied` for
        PERMISSION_DENIED, `ConveyorError` otherwise, with the call's code and
        details; for UNIMPLEMENTED with the endpoint hint (see the class)."""
        code = _call_attr(error, "code")
        details = _call_attr(error, "details") or ""
        name = code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
        prefix = f"{what}: " if what else ""
        message = f"{prefix}{name}: {details}" if details else f"{prefix}{name}"
        if code == grpc.StatusCode.UNAVAILABLE:
            message += tls_hint(details)
        error_out = error_class(code)(message, code=code, details=details)
        return error_out.at_endpoint(service, address)

    def at_endpoint(self, service: str | None, address: str | None) -> ConveyorError:
        """Records the service and address of the call that failed and, for
        UNIMPLEMENTED, adds the endpoint hint to the message (once).
        Returns self."""
        if service is None or self.service is not None:
            return self
        self.service, self.address = service, address
        if self.code == grpc.StatusCode.UNIMPLEMENTED:
            self.args = (f"{self.args[0] if self.args else ''}{endpoint_hint(service, address)}", *self.args[1:])
        return self


    def add_hint(self, hint: str) -> ConveyorError:
        """Appends `hint` to the message (nothing when empty). Returns self."""
        if hint:
            self.args = (f"{self.args[0] if self.args else ''}{hint}", *self.args[1:])
        return self


def endpoint_hint(service: str, address: str | None) -> str:
    """What an UNIMPLEMENTED error adds: the address called, and the option
    and environment variable that send `service`'s calls elsewhere."""
    called = f"called {address}; " if address else ""
    env = f"CONVEYOR_{service.upper()}_ADDR"
    return f" ({called}set {env} or endpoints={{'{service}': …}} to reach the {service} role elsewhere)"


# What a failed TLS handshake looks like in gRPC's message, and what to do.
_TLS_HINTS = (
    (
        ("CERTIFICATE_REQUIRED", "PEER_DID_NOT_RETURN_A_CERTIFICATE", "certificate required", "BAD_CERTIFICATE",
         "UNKNOWN_CA", "CERTIFICATE_UNKNOWN", "DECRYPT_ERROR"),
        "the server requires a client certificate it trusts (mTLS): give tls_cert and tls_key "
        "(or set CONVEYOR_TLS_CERT and CONVEYOR_TLS_KEY) to a certificate signed by the server's client CA",
    ),
    (
        # TLS 1.3: the client's handshake is done when the server checks its
        # certificate, so a refusal arrives as an alert on the first read.
        ("Unwrap failed", "TSI_DATA_CORRUPTED"),
        "the server broke off the connection right after the handshake, as a server requiring client "
        "certificates (mTLS) does with a client without one it trusts: give tls_cert and tls_key "
        "(or set CONVEYOR_TLS_CERT and CONVEYOR_TLS_KEY) to a certificate signed by the server's client CA",
    ),
    (
        ("CERTIFICATE_VERIFY_FAILED", "certificate verify failed", "unable to get local issuer", "self signed",
         "self-signed"),
        "the server's certificate is not signed by a CA this client trusts: give tls_ca "
        "(or set CONVEYOR_TLS_CA) to the PEM bundle of the CA that signed it",
    ),
    (
        ("is not in peer certificate", "hostname mismatch", "Peer name"),
        "the server's certificate does not name the host of the address: connect by a name (or IP) it holds",
    ),
    (
        ("WRONG_VERSION_NUMBER", "HTTP_REQUEST", "wrong version number"),
        "the server does not speak TLS: use an http:// address without TLS settings, "
        "or start the server with --tls-cert and --tls-key",
    ),
    (
        ("handshake", "SSL_ERROR", "TSI_"),
        "check the TLS settings: tls_ca / CONVEYOR_TLS_CA (the CA that signed the server's certificate) "
        "and, when the server requires client certificates, tls_cert and tls_key",
    ),
)


def tls_hint(details: str) -> str:
    """What an UNAVAILABLE error adds when its message shows a failed TLS
    handshake: what to do about it ("" otherwise)."""
    for needles, hint in _TLS_HINTS:
        if any(needle.lower() in details.lower() for needle in needles):
            return f" (TLS handshake failed: {hint})"
    return ""


def _call_attr(error: grpc.RpcError, name: str) -> Any:
    method = getattr(error, name, None)
    if callable(method):
        try:
            return method()
        except Exception:  # pragma: no cover - defensive: a broken call object
            return None
    return None


class TaskTimeout(ConveyorError, TimeoutError):
    """A wait ended before the task finished (gRPC DEADLINE_EXCEEDED).
    Waiting changes nothing: the task goes on and can be awaited again."""

    def __init__(self, message: str, *, code: grpc.StatusCode | None = None, details: str = ""):
        super().__init__(message, code=code or grpc.StatusCode.DEADLINE_EXCEEDED, details=details)


class Unauthenticated(ConveyorError):
    """The server did not accept the call's credentials (gRPC UNAUTHENTICATED):
    no token where one is required, a malformed `authorization` header, or a
    token it does not know (never issued, or revoked since). `details` is the
    server's message. Give `token=` (or fix it); retrying the same call
    changes nothing."""

    def __init__(self, message: str, *, code: grpc.StatusCode | None = None, details: str = ""):
        super().__init__(message, code=code or grpc.StatusCode.UNAUTHENTICATED, details=details)


class PermissionDenied(ConveyorError, PermissionError):
    """The server knows the caller but its principal may not make this call in
    the call's namespace (gRPC PERMISSION_DENIED), e.g. a `reader` submitting,
    or any role of namespace "team-a" used in "team-b". `details` is the
    server's message, which names the principal, the permission, the
    namespace and the role that would grant it. Also a `PermissionError`.
    A worker whose session is refused so stops with this error."""

    def __init__(self, message: str, *, code: grpc.StatusCode | None = None, details: str = ""):
        super().__init__(message, code=code or grpc.StatusCode.PERMISSION_DENIED, details=details)


def error_class(code: grpc.StatusCode | None) -> type[ConveyorError]:
    """The `ConveyorError` subclass raised for a call that failed with `code`."""
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return TaskTimeout
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return Unauthenticated
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return PermissionDenied
    return ConveyorError


class PayloadError(ConveyorError, ValueError):
    """A value could not be encoded as, or decoded from, a JSON payload."""


class ProtocolError(ConveyorError):
    """The server broke the protocol (e.g. a response without its task)."""


class TaskNotSucceeded(ConveyorError):
    """The task finished without a result. `state` is its terminal state
    (a `conveyor.TaskState`), `task_id` its id."""

    def __init__(self, message: str, *, task_id: str = "", state: Any = None):
        super().__init__(message)
        self.task_id = task_id
        self.state = state


class TaskFailed(TaskNotSucceeded):
    """The task ended FAILED. Carries the handler's error as reported by the
    worker, in whatever language it ran: `type` (e.g. "ValueError"),
    `message`, `traceback` (text, possibly empty) and `retryable`.

    For a workflow node the platform failed because a node it depends on
    failed, `reason` is "DEPENDENCY_FAILED" and `cause_task_id` names that
    parent (follow it for the cause chain). A failed workflow raises this
    error for its failed node (`workflow_id`, `node` its index, `task_name`),
    with `cause` the error of the node `cause_task_id` names, if known (a
    `TaskFailed`, or `TaskExpired`/`TaskCancelled` for a parent that expired
    or was cancelled).
    """

    def __init__(
        self,
        type: str,
        message: str,
        traceback: str = "",
        *,
        retryable: bool = False,
        task_id: str = "",
        state: Any = None,
        reason: str = "",
        cause_task_id: str = "",
        workflow_id: str = "",
        node: int | None = None,
        task_name: str = "",
        cause: TaskNotSucceeded | None = None,
        description: str | None = None,
    ):
        summary = f"{type}: {message}" if type else message
        super().__init__(description or summary, task_id=task_id, state=state)
        self.type = type
        self.message = message
        self.traceback = traceback
        self.retryable = retryable
        self.reason = reason
        self.cause_task_id = cause_task_id
        self.workflow_id = workflow_id
        self.node = node
        self.task_name = task_name
        self.cause = cause
        if cause is not None:
            self.__cause__ = cause

    def __reduce__(self):  # keep pickling (e.g. across processes) working
        return (
            _rebuild_task_failed,
            (self.type, self.message, self.traceback, self.retryable, self.task_id),
            {
                "reason": self.reason,
                "cause_task_id": self.cause_task_id,
                "workflow_id": self.workflow_id,
                "node": self.node,
                "task_name": self.task_name,
                "cause": self.cause,
                "args": self.args,
            },
        )

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.args = state.pop("args", self.args)
        self.__dict__.update(state)
        if self.cause is not None:
            self.__cause__ = self.cause


def _rebuild_task_failed(type, message, traceback, retryable, task_id):  # noqa: A002
    return TaskFailed(type, message, traceback, retryable=retryable, task_id=task_id)


class TaskCancelled(TaskNotSucceeded):
    """The task ended CANCELLED (cancelled before it ran, or revoked)."""


class TaskExpired(TaskNotSucceeded):
    """The task ended EXPIRED: it was not started before its `expires`."""


# --- raised by or into handlers ------------------------------------------------


class Reject(Exception):
    """Raise from a handler to fail the task for good: no retry, whatever the
    task's retry policy says.

    `raise Reject(ValueError("bad input"))` reports type "ValueError" and
    message "bad input"; `raise Reject("bad input")` reports type "Reject".
    Any exception with a false `retryable` attribute is final too, as are the
    types listed in a task's `dont_retry_for`.
    """

    retryable = False

    def __init__(self, reason: BaseException | str | None = None):
        super().__init__(reason)
        self.reason = reason


class Retry(Exception):
    """Raise from a handler to have the task retried after `countdown`
    seconds instead of its policy's backoff (Celery's `self.retry`); still
    bounded by the task's max_retries. `exc`, if given, is what the attempt
    reports as its error (type, message, traceback).

    `raise conveyor.Retry(countdown=30, exc=error)`, or from a bound task
    `raise ctx.retry(countdown=30, exc=error)`.
    """

    retryable = True

    def __init__(self, message: str | None = None, *, countdown: float | None = None, exc: BaseException | None = None):
        super().__init__(message or (f"retry in {countdown:g}s" if countdown is not None else "retry"))
        self.countdown = countdown
        self.exc = exc


class MaxRetriesExceededError(Exception):
    """Raised by `ctx.retry(max_retries=N)` when N retries were already made
    and no `exc` was given (Celery's name)."""


class SoftTimeLimitExceeded(Exception):
    """Raised inside a handler when its task's soft time limit passes: in a
    sync handler's thread (as Celery does), or as the cancellation of an
    async handler. Catch it to clean up; unhandled, the attempt fails with
    this type (and may be retried)."""


class Terminated(BaseException):
    """Raised inside a sync handler's thread when its attempt is cancelled
    (the dispatcher revoked it, its hard time limit passed, the worker is
    shutting down). Its outcome is discarded. A `BaseException`, like
    `asyncio.CancelledError`, so that `except Exception` does not swallow it."""
