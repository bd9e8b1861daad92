"""A gRPC client written by hand on the ``h2`` package: one HTTP/2 connection to 127.0.0.1
whose streams start with a flow-control window of 0, so the server cannot send a single
response byte on a stream until :meth:`RawH2.read` opens that stream's window. A stream
that is never read is a client that never reads."""

from __future__ import annotations

import socket
import urllib.parse
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h2.settings
from google.protobuf.message import Message


@dataclass
class Reply:
    """What one stream received."""

    headers: dict[str, str] = field(default_factory=dict)
    data: bytes = b""
    trailers: dict[str, str] = field(default_factory=dict)
    ended: bool = False

    @property
    def status(self) -> int:
        """grpc-status (from the trailers, or the headers of a trailers-only reply)."""
        return int(self.trailers.get("grpc-status", self.headers.get("grpc-status", "-1")))

    @property
    def message(self) -> str:
        """grpc-message, decoded."""
        raw = self.trailers.get("grpc-message", self.headers.get("grpc-message", ""))
        return urllib.parse.unquote(raw)

    def messages(self) -> list[bytes]:
        """The gRPC messages in the data (5-byte prefix each, uncompressed)."""
        out, data = [], self.data
        while data:
            size = int.from_bytes(data[1:5], "big")
            out.append(data[5 : 5 + size])
            data = data[5 + size :]
        return out


class RawH2:
    """One connection; streams opened with :meth:`call` are not read until :meth:`read`."""

    def __init__(self, target: str) -> None:
        host, port = target.rsplit(":", 1)
        assert host == "127.0.0.1", "tests talk to the loopback only"
        self.authority = target
        self.sock = socket.create_connection((host, int(port)), timeout=30)
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        )
        self.conn.initiate_connection()
        self.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
        self.conn.increment_flow_control_window(2**30)  # the connection's; streams stay at 0
        self.replies: dict[int, Reply] = {}
        self._flush()

    def call(
        self, method: str, request: Message, metadata: tuple[tuple[str, str], ...] = ()
    ) -> int:
        """Send one request on a new stream (its window 0); return the stream id."""
        stream = self.conn.get_next_available_stream_id()
        headers = [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", method),
            (":authority", self.authority),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            *metadata,
        ]
        self.conn.send_headers(stream, headers)
        body = request.SerializeToString()
        self.conn.send_data(stream, b"\0" + len(body).to_bytes(4, "big") + body, end_stream=True)
        self.replies[stream] = Reply()
        self._flush()
        return stream

    def read(self, stream: int, timeout_s: float = 30.0) -> Reply:
        """Open ``stream``'s window wide and read until it ends."""
        self.conn.increment_flow_control_window(2**30, stream)
        self._flush()
        self.sock.settimeout(timeout_s)
        reply = self.replies[stream]
        while not reply.ended:
            raw = self.sock.recv(65536)
            if not raw:
                raise ConnectionError("the server closed the connection")
            self._receive(raw)
        return reply

    def close(self) -> None:
        """Drop the connection (the server sees every open stream cancelled)."""
        self.sock.close()

    def _receive(self, raw: bytes) -> None:
        for event in self.conn.receive_data(raw):
            reply = self.replies.get(getattr(event, "stream_id", 0) or 0)
            if reply is None:
                continue
            if isinstance(event, h2.events.ResponseReceived):
                reply.headers = dict(event.headers)
            elif isinstance(event, h2.events.DataReceived):
                reply.data += event.data
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.TrailersReceived):
                reply.trailers = dict(event.headers)
            elif isinstance(event, h2.events.StreamEnded | h2.events.StreamReset):
                reply.ended = True
        self._flush()

    def _flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)
