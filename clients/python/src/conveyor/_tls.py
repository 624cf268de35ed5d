"""TLS settings of clients and workers: the CA bundle to trust and the client
certificate of mTLS, from options or the environment, read once into the
credentials of every channel the SDK opens."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Union

import grpc

from conveyor.errors import ConveyorError

__all__ = ["TLS_CA_ENV", "TLS_CERT_ENV", "TLS_KEY_ENV", "TlsSettings", "resolve_tls"]

TLS_CA_ENV = "CONVEYOR_TLS_CA"
TLS_CERT_ENV = "CONVEYOR_TLS_CERT"
TLS_KEY_ENV = "CONVEYOR_TLS_KEY"

PathLike = Union[str, "os.PathLike[str]"]


@dataclass(frozen=True)
class TlsSettings:
    """The PEM contents given (None: not given) and where each came from
    (an option name or an environment variable), for messages."""

    ca: bytes | None = None
    cert: bytes | None = None
    key: bytes | None = None
    ca_path: str = ""
    cert_path: str = ""
    sources: tuple[str, ...] = field(default=())

    def credentials(self) -> grpc.ChannelCredentials:
        """Channel credentials: the CA bundle (the system roots when none
        was given) and the client certificate, if any."""
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca, private_key=self.key, certificate_chain=self.cert
        )

    def describe(self) -> str:
        """A short summary, e.g. "CA ca.pem, client certificate client.pem"."""
        parts = [f"CA {self.ca_path}" if self.ca is not None else "system roots"]
        if self.cert is not None:
            parts.append(f"client certificate {self.cert_path}")
        return ", ".join(parts)


def _setting(value: PathLike | None, option: str, env: str) -> tuple[str | None, str]:
    """The path given by `option` (it wins) or `$env`, and the name of where
    it came from; (None, "") when neither is set (an empty value is unset)."""
    if value is not None:
        text = os.fspath(value).strip()
        if text:
            return text, option
    text = os.environ.get(env, "").strip()
    if text:
        return text, env
    return None, ""


def _read_pem(path: str, what: str, option: str, env: str, source: str, marker: str) -> bytes:
    """The bytes of PEM file `path`; ConveyorError naming the path, the
    option and the variable when it cannot be read or holds no `marker`."""
    given = f"from {source}" if source else ""
    fix = f"give {option}= (or set {env}) the path of a PEM file"
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as error:
        reason = error.strerror or str(error)
        raise ConveyorError(f"cannot read the TLS {what} {path} ({given}): {reason}; {fix}") from None
    if b"-----BEGIN" not in data or marker.encode() not in data:
        raise ConveyorError(f"the TLS {what} {path} ({given}) is not a PEM file with a {marker} block; {fix}")
    return data


def resolve_tls(
    tls_ca: PathLike | None = None, tls_cert: PathLike | None = None, tls_key: PathLike | None = None
) -> TlsSettings | None:
    """The TLS settings given by the options or, for each one not given, its
    environment variable (`CONVEYOR_TLS_CA`, `CONVEYOR_TLS_CERT`,
    `CONVEYOR_TLS_KEY`), with the files read; None when none is set.
    ConveyorError when a file cannot be read or a certificate comes without
    its key (or the other way round)."""
    ca_path, ca_source = _setting(tls_ca, "tls_ca", TLS_CA_ENV)
    cert_path, cert_source = _setting(tls_cert, "tls_cert", TLS_CERT_ENV)
    key_path, key_source = _setting(tls_key, "tls_key", TLS_KEY_ENV)
    if ca_path is None and cert_path is None and key_path is None:
        return None
    if (cert_path is None) != (key_path is None):
        given, missing = (cert_source, "key") if cert_path is not None else (key_source, "certificate")
        raise ConveyorError(
            f"the TLS client certificate and key go together: tls_cert and tls_key (or {TLS_CERT_ENV} and "
            f"{TLS_KEY_ENV}) must both be given, but only {given} is set; give the {missing} too, or neither"
        )
    ca = cert = key = None
    if ca_path is not None:
        ca = _read_pem(ca_path, "CA bundle", "tls_ca", TLS_CA_ENV, ca_source, "CERTIFICATE")
    if cert_path is not None and key_path is not None:
        cert = _read_pem(cert_path, "client certificate", "tls_cert", TLS_CERT_ENV, cert_source, "CERTIFICATE")
        key = _read_pem(key_path, "client key", "tls_key", TLS_KEY_ENV, key_source, "PRIVATE KEY")
    sources = tuple(s for s in (ca_source, cert_source, key_source) if s)
    return TlsSettings(ca, cert, key, ca_path=ca_path or "", cert_path=cert_path or "", sources=sources)
