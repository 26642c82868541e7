"""The gateway's TLS server contexts, the same in the supervisor's listener and in the relay process."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from pathlib import Path

from opendepot.pki.authority import project_of_server_name


def project_context(directory: Path) -> ssl.SSLContext:
    """A project's: its server certificate, and its CA verifies the client."""
    context = _server_context()
    context.load_cert_chain(directory / "server.pem", directory / "server-key.pem")
    context.load_verify_locations(directory / "ca.pem")
    return context


def _server_context() -> ssl.SSLContext:
    """The settings every gateway context shares. They must be on the listener's context too: OpenSSL
    copies a connection's ticket count, options and protocol bounds from the context it starts with, and
    the SNI switch to the project's context does not carry them over (only the certificates and the CA)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED
    context.set_alpn_protocols(["h2"])  # gRPC clients insist on h2
    # No TLS 1.3 session tickets: BuildKit's Go clients keep no session cache, so a ticket is never
    # used, and issuing two per handshake was a third of its CPU.
    context.num_tickets = 0
    # Let the client's cipher order win: Go leads with AES-128-GCM where the CPU has AES, cheaper
    # for large build contexts than the AES-256-GCM that OpenSSL's server order would pick.
    context.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    return context


def listener_context(placeholder: Path, project: Callable[[str], ssl.SSLContext | None]) -> ssl.SSLContext:
    """The listener's: a placeholder certificate until SNI picks the project's context (`project`)."""
    context = _server_context()
    context.load_cert_chain(placeholder / "server.pem", placeholder / "server-key.pem")

    def pick(sslobj: ssl.SSLSocket | ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> int | None:
        project_id = project_of_server_name(name)
        chosen = project(project_id) if project_id else None
        if chosen is None:
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        sslobj.context = chosen
        return None

    context.sni_callback = pick
    return context
