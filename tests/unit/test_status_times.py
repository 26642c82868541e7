"""A BuildKit status message relayed by the CLI (ReportStatusStream) or seen by the tap may carry any time:
one past datetime's range is no time, not an error that ends the whole stream."""

from __future__ import annotations

from protobuf.wkt.google.protobuf.timestamp_pb import Timestamp

from opendepot.buildkit.status import decode, events
from opendepot.gen.moby.buildkit.v1 import control_pb

EDGE = Timestamp(seconds=253402300799, nanos=999999999)  # 9999-12-31T23:59:59.999999999Z
FAR = Timestamp(seconds=10**12)
AT = Timestamp(seconds=1767225600)  # 2026-01-01


def test_times_past_the_range_are_no_time() -> None:
    message = control_pb.StatusResponse(
        vertexes=[
            control_pb.Vertex(digest="sha256:a", name="RUN x", started=EDGE, completed=FAR),
            control_pb.Vertex(digest="sha256:b", name="RUN y", started=AT),
        ],
        logs=[control_pb.VertexLog(vertex="sha256:a", stream=1, timestamp=EDGE, msg=b"hi\n")],
    )
    for vertices, logs in (events(message), decode(message.to_binary())):
        assert [(v.digest, v.started, v.completed) for v in vertices[:1]] == [("sha256:a", None, None)]
        assert vertices[1].started is not None and vertices[1].started.year == 2026
        assert [(chunk.at, chunk.data) for chunk in logs] == [(None, b"hi\n")]
