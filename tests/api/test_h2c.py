"""The depot CLI's transport: h2c with prior knowledge, a new connection for every RPC, gzip accepted.
The preface goes to HTTP/2 at once (server/hypercorn.py); a preface split over reads takes Hypercorn's own
path; small answers come back as stored gzip (api/compression.py)."""

from __future__ import annotations

import gzip
import socket
import time

import h2.config
import h2.connection
import h2.events
import pytest

from opendepot.gen.depot.core.v1 import project_pb as pb
from tests.support.server import Server

PATH = "/depot.core.v1.ProjectService/ListProjects"


def call_h2c(server: Server, token: str, split_preface: bool) -> tuple[dict[bytes, bytes], bytes]:
    """One unary call on a new connection, headers as the CLI sends them; (response headers, body)."""
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    client.initiate_connection()
    body = pb.ListProjectsRequest().to_binary()
    headers = [
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":authority", f"127.0.0.1:{server.port}".encode()),
        (b":path", PATH.encode()),
        (b"authorization", f"Bearer {token}".encode()),
        (b"connect-protocol-version", b"1"),
        (b"content-type", b"application/proto"),
        (b"accept-encoding", b"gzip"),
        (b"content-length", str(len(body)).encode()),
    ]
    client.send_headers(1, headers)
    client.send_data(1, body, end_stream=True)
    wire = client.data_to_send()
    answer: dict[bytes, bytes] = {}
    data = b""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        if split_preface:
            sock.sendall(wire[:10])
            time.sleep(0.05)
            wire = wire[10:]
        sock.sendall(wire)
        ended = False
        while not ended:
            chunk = sock.recv(65536)
            assert chunk, "the server closed the connection before answering"
            for event in client.receive_data(chunk):
                if isinstance(event, h2.events.ResponseReceived):
                    answer = dict(event.headers)
                elif isinstance(event, h2.events.DataReceived):
                    data += event.data
                    client.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.StreamEnded):
                    ended = True
            sock.sendall(client.data_to_send())
    return answer, data


@pytest.mark.parametrize("split_preface", [False, True], ids=["preface-whole", "preface-split"])
def test_prior_knowledge_call_answers_with_gzip(server: Server, split_preface: bool) -> None:
    headers, body = call_h2c(server, server.admin_token, split_preface)
    assert headers[b":status"] == b"200"
    assert headers[b"content-encoding"] == b"gzip"
    assert b"server" not in headers
    listed = pb.ListProjectsResponse.from_binary(gzip.decompress(body))
    assert isinstance(listed, pb.ListProjectsResponse)


def test_prior_knowledge_call_with_a_bad_token_is_unauthenticated(server: Server) -> None:
    headers, body = call_h2c(server, "not-a-token", split_preface=False)
    assert headers[b":status"] == b"401"
    assert b"unauthenticated" in body
