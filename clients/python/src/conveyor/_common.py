"""What the sync and the asyncio clients share: addresses, channel options,
request normalisation and the rules of the wait loop."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import grpc

from conveyor._tls import TlsSettings, resolve_tls
from conveyor.errors import ConveyorError

DEFAULT_ADDRESS = "http://127.0.0.1:50051"
ADDRESS_ENV = "CONVEYOR_ADDR"
# The namespace of clients, apps and workers not given one ("" when unset:
# the server's "default" namespace).
NAMESPACE_ENV = "CONVEYOR_NAMESPACE"

# The services of conveyor.v1, by the key `endpoints=` takes, in the order
# they are listed; a role of `conveyor serve` serves each.
SERVICES = ("submission", "results", "dispatch", "scheduling")
# The environment variable that sets one service's address (over
# CONVEYOR_ADDR and the constructor's `address`).
SERVICE_ENV = {service: f"CONVEYOR_{service.upper()}_ADDR" for service in SERVICES}

# Most tasks one SubmitTasks call may carry (the service's limit).
MAX_TASKS_PER_BATCH = 1000
# Most encoded bytes of task specs in one SubmitTasks call: a larger batch is
# split (a server accepts messages of 64 MiB; one task holds at most 4 MiB of
# argument payloads).
MAX_BATCH_BYTES = 16 * 1024 * 1024
# The receive and send limit of every call and worker stream of this SDK:
# above the largest message a server sends (a task with 4 MiB of arguments,
# a worker frame of `Welcome.max_frame_bytes`), where gRPC's default of 4 MiB
# is not.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# The gRPC deadline of a WaitTask is this much longer than its `timeout`, so
# that the server's own timeout answers first.
WAIT_DEADLINE_MARGIN = 2.0
# A WaitTask that ended with DEADLINE_EXCEEDED sooner than this is not asked
# again: the server refused rather than waited, and asking again would spin.
MIN_USEFUL_WAIT = 1.0
# Deadline of the calls that do not wait (submit, get, cancel).
DEFAULT_RPC_TIMEOUT = 30.0

CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.keepalive_permit_without_calls", 1),
]


@dataclass(frozen=True)
class Target:
    """A parsed address: the gRPC target and whether it uses TLS."""

    target: str
    secure: bool
    # The address as given (for messages); not part of equality.
    address: str = field(default="", compare=False)

    def __str__(self) -> str:
        return self.address or self.target


class Security:
    """How channels authenticate the server (and themselves): explicit
    `credentials` (used on every address, as given), else the TLS settings
    of the `tls_*` options or `CONVEYOR_TLS_*` variables (options win), used
    on every address (an `http://` one is an error), else TLS with the
    system roots on `https://` addresses and plaintext on the others."""

    def __init__(
        self,
        credentials: grpc.ChannelCredentials | None = None,
        tls_ca: Any = None,
        tls_cert: Any = None,
        tls_key: Any = None,
    ):
        if credentials is not None and any(v is not None for v in (tls_ca, tls_cert, tls_key)):
            raise ConveyorError("give either credentials= or tls_ca/tls_cert/tls_key, not both")
        self.credentials = credentials
        # Explicit credentials win over the CONVEYOR_TLS_* variables too.
        self.tls = None if credentials is not None else resolve_tls(tls_ca, tls_cert, tls_key)
        self._tls_credentials = self.tls.credentials() if self.tls is not None else None

    def for_target(self, target: Target) -> grpc.ChannelCredentials | None:
        """The credentials of a channel to `target`; None for plaintext."""
        if self.credentials is not None:
            return self.credentials
        if self._tls_credentials is not None:
            return self._tls_credentials
        return grpc.ssl_channel_credentials() if target.secure else None

    def describe(self, targets: Sequence[Target]) -> str:
        """How channels to `targets` are secured, e.g. "on (CA ca.pem)"."""
        if self.credentials is not None:
            return "on (credentials given)"
        if self.tls is not None:
            return f"on ({self.tls.describe()})"
        if all(t.secure for t in targets):
            return "on (system roots)"
        return "on for https:// (system roots)" if any(t.secure for t in targets) else "off"


def closed_hint(error: Any, target: Target, security: Security | None) -> str:
    """What an UNAVAILABLE error adds when the server closed the connection
    at once ("Socket closed"), which is how a TLS mismatch often looks:
    plaintext to a TLS server, or no (or an untrusted) client certificate
    for an mTLS server. "" when it does not apply."""
    details = str(getattr(error, "details", "") or "").lower()
    if getattr(error, "code", None) != grpc.StatusCode.UNAVAILABLE:
        return ""
    if security is None or security.credentials is not None:
        return ""
    if "socket closed" not in details and "connection reset" not in details:
        return ""
    if not target.secure:
        return " (the server closed the connection at once: if it serves TLS, use an https:// address)"
    if security.tls is None or security.tls.cert is None:
        return (
            " (the server closed the connection at once: if it requires client certificates (mTLS), "
            "give tls_cert and tls_key, or set CONVEYOR_TLS_CERT and CONVEYOR_TLS_KEY)"
        )
    return (
        " (the server closed the connection at once: if it requires client certificates (mTLS), it may not "
        "trust this one (tls_cert / CONVEYOR_TLS_CERT): it must be signed by the server's client CA)"
    )


def resolve_address(address: str | Sequence[str] | None) -> str:
    if address is not None and not isinstance(address, str):
        return ",".join(address)
    return address or os.environ.get(ADDRESS_ENV) or DEFAULT_ADDRESS


def resolve_namespace(namespace: str | None) -> str:
    """The namespace to send: `namespace` when given ("" included), else
    `$CONVEYOR_NAMESPACE`, else "" (the server's "default" namespace)."""
    if namespace is None:
        return os.environ.get(NAMESPACE_ENV, "").strip()
    if not isinstance(namespace, str):
        raise TypeError(f"namespace must be a str, not {type(namespace).__name__}")
    return namespace


def check_endpoints(endpoints: Mapping[str, Any] | None) -> dict[str, Any]:
    """`endpoints` as a dict, after checking that every key names a service
    (ValueError naming the valid keys otherwise)."""
    if endpoints is None:
        return {}
    if not isinstance(endpoints, Mapping):
        raise TypeError(f"endpoints must be a mapping of service to address, not {type(endpoints).__name__}")
    unknown = [key for key in endpoints if key not in SERVICES]
    if unknown:
        raise ValueError(
            f"unknown service(s) in endpoints: {', '.join(repr(k) for k in unknown)}; "
            f"the services are {', '.join(repr(s) for s in SERVICES)}"
        )
    return dict(endpoints)


def resolve_endpoints(
    address: str | Sequence[str] | None, endpoints: Mapping[str, Any] | None = None
) -> dict[str, str | Sequence[str]]:
    """The address (or failover list) of every service, first found of:
    `endpoints[service]`, `$CONVEYOR_<SERVICE>_ADDR`, `address`,
    `$CONVEYOR_ADDR`, `http://127.0.0.1:50051`."""
    given = check_endpoints(endpoints)
    general = resolve_address(address)
    resolved: dict[str, str | Sequence[str]] = {}
    for service in SERVICES:
        value = given.get(service)
        if value is None or (isinstance(value, str) and not value.strip()):
            value = os.environ.get(SERVICE_ENV[service], "").strip() or general
        resolved[service] = value
    return resolved


def parse_address(address: str | None, tls: TlsSettings | None = None) -> Target:
    """`http://host:port` (plaintext h2c), `https://host[:port]` (TLS), a bare
    `host:port` (plaintext) or a gRPC target such as `unix:/path`. With `tls`
    (TLS options or variables given) every address but `http://` uses TLS;
    an `http://` one is a ConveyorError saying to use `https://`."""
    address = resolve_address(address).strip()
    if "://" not in address:
        return Target(address, secure=tls is not None, address=address)
    parts = urlsplit(address)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https", "grpc", "grpcs"):
        # dns://, unix://, ipv4: and friends are gRPC targets already.
        return Target(address, secure=tls is not None, address=address)
    secure = scheme in ("https", "grpcs")
    if not secure and tls is not None:
        rest = address[len(parts.scheme) + 3 :]
        raise ConveyorError(
            f"address {address!r} is plaintext {parts.scheme}:// but TLS is configured "
            f"({', '.join(tls.sources)}): use https://{rest} to connect with TLS, or drop the TLS settings"
        )
    host = parts.hostname
    if not host:
        raise ValueError(f"no host in address {address!r}")
    port = parts.port or (443 if secure else 80)
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    return Target(f"{host}:{port}", secure=secure, address=address)


def parse_targets(address: str | Sequence[str] | None, tls: TlsSettings | None = None) -> list[Target]:
    """Every address of a comma-separated list (or a sequence), each as
    `parse_address` reads it. `ipv4:A,B` and `ipv6:[A],[B]` become one target
    per address, so that the SDK fails over between them itself."""
    if address is not None and not isinstance(address, str):
        items = [str(item) for item in address]
    else:
        text = resolve_address(address).strip()
        scheme = ""
        for prefix in ("ipv4:", "ipv6:"):
            if text.startswith(prefix):
                scheme, text = prefix, text[len(prefix) :]
        items = [scheme + part.strip() if scheme else part.strip() for part in text.split(",")]
    targets = [parse_address(item, tls) for item in items if item.strip()]
    if not targets:
        raise ValueError(f"no address in {address!r}: give host:port, http://host:port or a comma-separated list")
    return targets


class Endpoint:
    """The addresses of one or more services (a failover list): a channel per
    address and the one in use. Services given the same addresses share one
    `Endpoint`, and so fail over together."""

    def __init__(self, targets: Sequence[Target], channels: Sequence[Any]):
        self.targets = list(targets)
        self.channels = list(channels)
        self.current = 0

    @property
    def channel(self) -> Any:
        return self.channels[self.current]

    @property
    def address(self) -> str:
        """The address in use now, as it was given."""
        return str(self.targets[self.current])

    def fail_over(self) -> None:
        self.current = (self.current + 1) % len(self.channels)


def open_endpoints(
    address: str | Sequence[str] | None,
    endpoints: Mapping[str, Any] | None,
    make_channel: Callable[[Target], Any],
    tls: TlsSettings | None = None,
) -> dict[str, Endpoint]:
    """Every service's `Endpoint` (see `resolve_endpoints`), with one channel
    per distinct address made by `make_channel`; `tls` as `parse_address`
    takes it."""
    by_targets: dict[tuple[tuple[str, bool], ...], Endpoint] = {}
    channels: dict[tuple[str, bool], Any] = {}
    opened: dict[str, Endpoint] = {}
    for service, value in resolve_endpoints(address, endpoints).items():
        targets = parse_targets(value, tls)
        key = tuple((t.target, t.secure) for t in targets)
        if key not in by_targets:
            for t in targets:
                if (t.target, t.secure) not in channels:
                    channels[(t.target, t.secure)] = make_channel(t)
            by_targets[key] = Endpoint(targets, [channels[(t.target, t.secure)] for t in targets])
        opened[service] = by_targets[key]
    return opened


def given_channel(channel: Any, endpoints: Mapping[str, Any] | None) -> dict[str, Endpoint]:
    """Every service on the one `channel` a caller passed."""
    if endpoints:
        raise ValueError("give either channel= or endpoints=, not both")
    endpoint = Endpoint([Target("channel", False, address="the channel given to the client")], [channel])
    return dict.fromkeys(SERVICES, endpoint)


def distinct_channels(endpoints: Mapping[str, Endpoint]) -> list[Any]:
    """Each channel of `endpoints` once."""
    seen: dict[int, Any] = {}
    for endpoint in endpoints.values():
        for channel in endpoint.channels:
            seen.setdefault(id(channel), channel)
    return list(seen.values())


def receive_limit(options: Iterable[tuple[str, Any]]) -> int | None:
    """The receive limit that channel `options` set (the last
    `grpc.max_receive_message_length` wins), or None for no limit."""
    limit: Any = 4 * 1024 * 1024  # gRPC's default
    for key, value in options:
        if key == "grpc.max_receive_message_length":
            limit = value
    return None if limit is None or int(limit) < 0 else int(limit)


def split_batches(specs: Sequence[Any]) -> Iterator[list[Any]]:
    """`specs` (TaskSpec messages) in runs of at most MAX_TASKS_PER_BATCH
    tasks and at most MAX_BATCH_BYTES encoded bytes, in order; a task larger
    than MAX_BATCH_BYTES travels alone."""
    batch: list[Any] = []
    size = 0
    for spec in specs:
        # The spec's own bytes plus its field tag and length prefix.
        encoded = spec.ByteSize() + 6
        if batch and (len(batch) >= MAX_TASKS_PER_BATCH or size + encoded > MAX_BATCH_BYTES):
            yield batch
            batch, size = [], 0
        batch.append(spec)
        size += encoded
    if batch:
        yield batch


def call_metadata(token: str | None, metadata: Iterable[tuple[str, str]] | None) -> tuple[tuple[str, str], ...]:
    items = list(metadata or ())
    if token:
        items.append(("authorization", f"Bearer {token}"))
    return tuple(items)


def as_request(item: Any) -> tuple[str, Sequence[Any], Mapping[str, Any], Mapping[str, Any]]:
    """(name, args, kwargs, options) of one entry of `submit_many`: a
    `Signature` (anything with name/args/kwargs/options attributes), a
    mapping with those keys, or a tuple `(name, args[, kwargs[, options]])`."""
    if isinstance(item, Mapping):
        unknown = set(item) - {"name", "args", "kwargs", "options"}
        if unknown:
            raise TypeError(f"unknown key(s) in task request: {', '.join(sorted(unknown))}")
        return item["name"], item.get("args") or (), item.get("kwargs") or {}, item.get("options") or {}
    if isinstance(item, tuple):
        if not 1 <= len(item) <= 4:
            raise TypeError("a task request tuple is (name, args[, kwargs[, options]])")
        name, args, kwargs, options = (*item, None, None, None)[:4]
        return name, args or (), kwargs or {}, options or {}
    if hasattr(item, "name") and hasattr(item, "args"):
        if getattr(item, "links", None) or getattr(item, "errbacks", None):
            raise TypeError(
                f"{item!r} has link/link_error callbacks, which make it a workflow: submit it with its "
                "apply_async (submit_many sends plain tasks)"
            )
        return item.name, item.args or (), getattr(item, "kwargs", None) or {}, getattr(item, "options", None) or {}
    raise TypeError(f"cannot submit {item!r}: give a Signature, a mapping or a (name, args, ...) tuple")


def wait_again(code: grpc.StatusCode | None, waited: float, remaining: float | None) -> bool:
    """True when a WaitTask timed out at the server's cap rather than ours:
    time remains (or there is no deadline) and the call really waited."""
    if code != grpc.StatusCode.DEADLINE_EXCEEDED or waited < MIN_USEFUL_WAIT:
        return False
    return remaining is None or remaining >= MIN_USEFUL_WAIT


# Retries of UNAVAILABLE for calls that are safe to repeat: at most this many
# attempts, the delay from RETRY_MIN doubling to RETRY_MAX (full jitter).
RETRY_ATTEMPTS = 5
RETRY_MIN = 0.05
RETRY_MAX = 1.0


def retry_delay(attempt: int) -> float:
    """The pause before retry number `attempt` (1-based)."""
    import random  # noqa: PLC0415

    return random.uniform(0, min(RETRY_MAX, RETRY_MIN * (2 ** (attempt - 1))))
