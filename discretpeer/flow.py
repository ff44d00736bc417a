"""Receive windows that follow what the application has read (bounded receive buffers).

aioquic doubles a stream's (and the connection's) receive window whenever half of it has
*arrived*, whatever the application has read, so a slow reader lets the sender fill our memory
without bound. Here the windows slide: the peer may send at most ``window`` bytes beyond what
the application consumed, per stream and per connection. Credit is re-granted in steps of half a
window, when the application reads (the stream's reader wakes the connection, see
``connection.py``).

This relies on two private methods of aioquic's ``QuicConnection`` (pinned in pyproject.toml).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aioquic.quic.connection import MAX_STREAM_DATA_FRAME_CAPACITY, QuicConnection
from aioquic.quic.packet import QuicFrameType

STREAM_WINDOW = 4 * 1024 * 1024
CONNECTION_WINDOW = 16 * 1024 * 1024


def _no_unread(stream_id: int | None) -> int:
    return 0


class AppPacedQuicConnection(QuicConnection):
    """A QuicConnection whose flow-control credit follows the application's reads.

    ``unread(stream_id)`` returns the bytes received but not yet read on that stream
    (``unread(None)``: on all streams); the owning protocol sets it."""

    stream_window = STREAM_WINDOW
    connection_window = CONNECTION_WINDOW

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.unread: Callable[[int | None], int] = _no_unread

    def _write_connection_limits(self, builder: Any, space: Any) -> None:
        max_data = self._local_max_data
        consumed = max_data.used - self.unread(None)
        target = consumed + self.connection_window
        if target - max_data.value >= self.connection_window // 2:
            max_data.value = target
        # the base class would double the window on arrival; hide the arrival count from it
        used, max_data.used = max_data.used, 0
        try:
            super()._write_connection_limits(builder, space)
        finally:
            max_data.used = used

    def _write_stream_limits(self, builder: Any, space: Any, stream: Any) -> None:
        if stream.max_stream_data_local:
            consumed = stream.receiver.highest_offset - self.unread(stream.stream_id)
            target = consumed + self.stream_window
            if target - stream.max_stream_data_local >= self.stream_window // 2:
                stream.max_stream_data_local = target
        if stream.max_stream_data_local_sent != stream.max_stream_data_local:
            buf = builder.start_frame(
                QuicFrameType.MAX_STREAM_DATA,
                capacity=MAX_STREAM_DATA_FRAME_CAPACITY,
                handler=self._on_max_stream_data_delivery,
                handler_args=(stream,),
            )
            buf.push_uint_var(stream.stream_id)
            buf.push_uint_var(stream.max_stream_data_local)
            stream.max_stream_data_local_sent = stream.max_stream_data_local
