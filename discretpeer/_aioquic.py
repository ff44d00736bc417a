"""Everything discretpeer and the beacon take from aioquic's private API, in one module.

aioquic has no public way to read a connection's RTT, its send buffers, its network paths, the
peer's certificate, or to shape its flow-control credit, datagram size or per-connection memory.
This module does those things with aioquic's internals, behind named functions and classes; no
other module touches a private name of aioquic (ruff's SLF001 is allowed here only). An untested
aioquic release fails at import (:func:`check`), with what to install: the internals below may
have changed under it (``DISCRETPEER_ANY_AIOQUIC=1`` skips the check, at your own risk).

**Upgrading aioquic: the checklist.** :data:`PRIVATE_API` names every private attribute, method
and hook this module relies on, class by class; ``tests/unit/test_aioquic.py`` checks that the
installed aioquic still has each one, and that this module uses no private name missing from the
list. For each, read the new release's code where it is defined and used:

- ``QuicConnection``: receive credit (``_local_max_data``, ``_local_max_streams_bidi/uni``,
  ``_write_connection_limits``, ``_write_stream_limits``, ``_on_max_stream_data_delivery``) for
  :class:`SlidingCredit`; reassembly (``_handle_stream_frame``, ``_handle_crypto_frame``,
  ``_streams``, ``_crypto_streams``) for :class:`BoundedReassembly`; paths (``_network_paths``)
  for :class:`AmplificationLimit` and :func:`validated_path_addresses`; the datagram size and
  the application packet writer (``_max_datagram_size``, ``_write_application``, ``_cryptos``,
  ``_handshake_confirmed``, ``_close_pending``) for :class:`SizeProbing`; closing
  (``_close_event``, ``_close_at``, ``_close_end``) for :func:`is_closing` and
  :meth:`QuicProtocol.stateless_reset`; connection IDs (``_host_cids``, ``_host_cid_seq``,
  ``_replenish_connection_ids``, ``_remote_active_connection_id_limit``,
  ``_local_active_connection_id_limit``, ``_local_initial_source_connection_id``,
  ``_peer_cid``, ``_peer_cid_available``) for the beacon's connection IDs and stateless resets;
  the beacon's memory diet (``_crypto_buffers``, ``_cryptos_initial``, ``_spaces``,
  ``_datagrams_pending``, ``_is_client``); ``_loss`` (``QuicPacketRecovery``: ``_cc``,
  ``_pacer``, ``_rtt_smoothed``; for :func:`congestion_state` also ``_rtt_latest``, ``_rtt_min``,
  ``_pto_count``), ``_logger``, ``_handshake_complete``;
- ``QuicPacketBuilder`` (the size probe): ``_packet``, ``_end_packet``, ``_datagrams``,
  ``_datagram_needs_padding``, ``_flight_bytes``, ``_buffer_capacity``;
- streams: ``QuicStreamSender._buffer_start/_buffer_stop`` (unacknowledged bytes),
  ``_buffer_fin`` (a stream's end written: unacknowledged until ``is_finished``),
  ``QuicStreamReceiver._ranges`` (out-of-order fragments);
- congestion control and pacer: their ``_max_datagram_size`` copies; Reno's and CUBIC's
  ``_congestion_recovery_start_time`` (a new congestion event, for :func:`count_losses`);
- ``tls.Context._peer_certificate``; ``CryptoContext._setup_cb/_teardown_cb``;
  ``aioquic._crypto.AEAD`` (``_aead``, ``_iv``) and ``HeaderProtection`` (``_mask``,
  ``_is_chacha20``) for the beacon's ciphers built per packet;
- ``QuicConnectionProtocol`` (asyncio): ``_quic``, ``_loop``, ``_transmit_soon``,
  ``_process_events``, ``_stream_readers``, ``_create_stream``, ``_timer``, ``_timer_at``,
  ``_handle_timer``, ``_transmit_task``, ``_connected``, ``_closed``; ``QuicStreamAdapter._closing``;
- the module function ``aioquic.quic.connection.EPOCHS`` (memoized by :func:`share_frame_tables`);
- outside aioquic: ``asyncio.StreamReader._buffer`` (:func:`reader_buffered`) and ``_paused``
  (:func:`resume_at_next_read`).
"""

from __future__ import annotations

import os
from importlib import metadata

from discretpeer.addresses import Addr

TESTED = ("1.7.2",)  # what CI runs; pyproject.toml pins exactly these


class UntestedAioquic(ImportError):
    pass


def check(version: str | None = None) -> None:
    """Raise :class:`UntestedAioquic` unless ``version`` (default: the installed one) was tested."""
    if version is None:
        if os.environ.get("DISCRETPEER_ANY_AIOQUIC"):
            return
        try:
            version = metadata.version("aioquic")
        except metadata.PackageNotFoundError:
            return  # not installed as a distribution (a vendored copy): nothing to compare
    if version not in TESTED:
        raise UntestedAioquic(
            f"discretpeer was tested with aioquic {', '.join(TESTED)} and relies on its internals; "
            f"aioquic {version} is installed: pip install 'aioquic=={TESTED[-1]}' "
            "(or set DISCRETPEER_ANY_AIOQUIC=1 to try it anyway)"
        )


check()  # before anything of aioquic is imported: an untested release fails here, with what to install

# E402 is allowed in this file: these imports come after the version check on purpose
import asyncio
import functools
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from aioquic import tls
from aioquic._crypto import AEAD, HeaderProtection
from aioquic.asyncio.protocol import QuicConnectionProtocol, QuicStreamAdapter
from aioquic.buffer import Buffer
from aioquic.quic import events
from aioquic.quic.connection import (
    MAX_STREAM_DATA_FRAME_CAPACITY,
    QuicConnection,
    QuicConnectionAdapter,
    QuicConnectionError,
    QuicConnectionId,
)
from aioquic.quic.crypto import CIPHER_SUITES, CryptoContext, CryptoPair, NoCallback, derive_key_iv_hp
from aioquic.quic.packet import QuicErrorCode, QuicFrameType, QuicPacketType
from aioquic.quic.packet_builder import QuicDeliveryState
from aioquic.quic.recovery import QuicPacketPacer
from aioquic.quic.stream import QuicStream
from cryptography import x509
from cryptography.hazmat.primitives.ciphers import Cipher, aead, algorithms, modes

MAX_DATAGRAM_SIZE = 16000  # aioquic writes STREAM/CRYPTO lengths as 2-byte varints (< 16384)

# The upgrade checklist (see the module docstring): every private name this module relies on.
PRIVATE_API: dict[str, tuple[str, ...]] = {
    "aioquic.quic.connection.QuicConnection": (
        "_ack_delay",
        "_close_at",
        "_close_end",
        "_close_event",
        "_close_pending",
        "_configuration",
        "_crypto_buffers",
        "_crypto_streams",
        "_cryptos",
        "_cryptos_initial",
        "_datagrams_pending",
        "_handle_crypto_frame",
        "_handle_stream_frame",
        "_handshake_complete",
        "_handshake_confirmed",
        "_host_cid_seq",
        "_host_cids",
        "_is_client",
        "_local_active_connection_id_limit",
        "_local_initial_source_connection_id",
        "_local_max_data",
        "_local_max_streams_bidi",
        "_local_max_streams_uni",
        "_logger",
        "_loss",
        "_max_datagram_size",
        "_network_paths",
        "_on_max_stream_data_delivery",
        "_peer_cid",
        "_peer_cid_available",
        "_remote_active_connection_id_limit",
        "_replenish_connection_ids",
        "_spaces",
        "_streams",
        "_write_application",
        "_write_connection_limits",
        "_write_stream_limits",
    ),
    "aioquic.quic.packet_builder.QuicPacketBuilder": (
        "_buffer_capacity",
        "_datagram_needs_padding",
        "_datagrams",
        "_end_packet",
        "_flight_bytes",
        "_packet",
    ),
    "aioquic.quic.recovery.QuicPacketRecovery": (
        "_cc",
        "_pacer",
        "_pto_count",
        "_rtt_latest",
        "_rtt_min",
        "_rtt_smoothed",
    ),
    "aioquic.quic.recovery.QuicPacketPacer": ("_max_datagram_size",),
    "aioquic.quic.congestion.reno.RenoCongestionControl": ("_congestion_recovery_start_time", "_max_datagram_size"),
    "aioquic.quic.congestion.cubic.CubicCongestionControl": ("_congestion_recovery_start_time", "_max_datagram_size"),
    "aioquic.quic.stream.QuicStreamSender": ("_buffer_start", "_buffer_stop", "_buffer_fin"),
    "aioquic.quic.stream.QuicStreamReceiver": ("_ranges",),
    "aioquic.quic.crypto.CryptoContext": ("_setup_cb", "_teardown_cb"),
    "aioquic.tls.Context": ("_peer_certificate",),
    "aioquic._crypto.AEAD": ("_aead", "_iv"),
    "aioquic._crypto.HeaderProtection": ("_is_chacha20", "_mask"),
    "aioquic.asyncio.protocol.QuicConnectionProtocol": (
        "_closed",
        "_connected",
        "_create_stream",
        "_handle_timer",
        "_loop",
        "_process_events",
        "_quic",
        "_stream_readers",
        "_timer",
        "_timer_at",
        "_transmit_soon",
        "_transmit_task",
    ),
    "aioquic.asyncio.protocol.QuicStreamAdapter": ("_closing",),
    "aioquic.quic.connection.EPOCHS": (),  # a module function (memoized): only its existence
    "asyncio.StreamReader": ("_buffer", "_paused"),
}


# --- reading and setting a connection's state ------------------------------------------------


def handshake_complete(quic: QuicConnection) -> bool:
    """Whether the TLS handshake of ``quic`` is complete (aioquic has no public flag)."""
    return bool(quic._handshake_complete)


def is_closing(quic: QuicConnection) -> bool:
    """True from the moment either side closed ``quic`` (it may still be draining)."""
    return quic._close_event is not None


def peer_certificate(quic: QuicConnection) -> x509.Certificate | None:
    """The certificate the other side presented in the TLS handshake (None: none)."""
    certificate: x509.Certificate | None = quic.tls._peer_certificate
    return certificate


def smoothed_rtt(quic: QuicConnection) -> float:
    """QUIC's smoothed round-trip time in seconds (0.0 before the first sample)."""
    return float(quic._loss._rtt_smoothed)


def max_datagram_size(quic: QuicConnection) -> int:
    """The size of the datagrams ``quic`` sends now."""
    return int(quic._max_datagram_size)


def set_max_datagram_size(quic: QuicConnection, size: int) -> None:
    """Use ``size``-byte datagrams (at most :data:`MAX_DATAGRAM_SIZE`) on a live connection from
    now on: the packet builder, congestion control and pacer each keep their own copy."""
    size = min(size, MAX_DATAGRAM_SIZE)
    quic._max_datagram_size = size
    for holder in (quic._loss._cc, quic._loss._pacer):
        if hasattr(holder, "_max_datagram_size"):
            holder._max_datagram_size = size


def set_pacer(quic: QuicConnection, pacer: QuicPacketPacer) -> None:
    """Pace ``quic``'s sending with ``pacer`` instead of aioquic's own."""
    quic._loss._pacer = pacer


def set_ack_delay(quic: QuicConnection, seconds: float) -> None:
    """Acknowledge ack-eliciting packets after ``seconds`` (aioquic's own: K_GRANULARITY, 1 ms)."""
    quic._ack_delay = seconds


def has_stream(quic: QuicConnection, stream_id: int) -> bool:
    """Whether stream ``stream_id`` exists (opened by either side, not yet freed)."""
    return stream_id in quic._streams


def unacked_bytes(quic: QuicConnection, stream_id: int) -> int:
    """Bytes written to ``stream_id`` that the peer has not acknowledged yet (aioquic keeps them
    all in the stream's send buffer, without limit); 0 for a stream that does not exist."""
    stream = quic._streams.get(stream_id)
    if stream is None:
        return 0
    sender = stream.sender
    return sender._buffer_stop - sender._buffer_start


def all_unacked_bytes(quic: QuicConnection) -> int:
    """:func:`unacked_bytes` summed over every stream of ``quic``, a stream's end (FIN) written
    and not yet acknowledged counting as one byte (``PeerConnection.aclose`` waits for it)."""
    total = 0
    for stream in list(quic._streams.values()):
        sender = stream.sender
        total += sender._buffer_stop - sender._buffer_start
        if sender._buffer_fin is not None and not sender.is_finished:  # (finished: FIN or reset acknowledged)
            total += 1
    return total


def active_path_address(quic: QuicConnection) -> Addr:
    """The address ``quic`` sends to now (aioquic's first network path, validated or not)."""
    path = quic._network_paths[0]
    return (path.addr[0], path.addr[1])


def validated_path_addresses(quic: QuicConnection) -> list[Any]:
    """The addresses of ``quic``'s network paths that QUIC validated, most recent first.

    aioquic makes any new source address of a decryptable packet the active path *before*
    validating it (RFC 9000 §9.3): what we send on our own behalf goes to these only."""
    return [path.addr for path in quic._network_paths if path.is_validated]


def peer_reset_tokens(quic: QuicConnection) -> list[bytes]:
    """The stateless reset tokens the other side gave for its connection IDs (in use and spare)."""
    current = getattr(quic, "_peer_cid", None)
    spare = getattr(quic, "_peer_cid_available", ())
    tokens = [c.stateless_reset_token for c in (current, *spare) if c is not None]
    return [t for t in tokens if t]


def limit_peer_streams(quic: QuicConnection, bidirectional: int, unidirectional: int) -> None:
    """Let the other side open at most this many streams of each kind, for the connection's
    whole life (before the handshake: the limits go out in the transport parameters)."""
    for limit, value in ((quic._local_max_streams_bidi, bidirectional), (quic._local_max_streams_uni, unidirectional)):
        limit.value = limit.sent = value


def log_to(quic: QuicConnection, logger: logging.Logger) -> None:
    """Send ``quic``'s log lines to ``logger`` (aioquic picks its "quic" logger itself)."""
    quic._logger = QuicConnectionAdapter(logger, quic._logger.extra)


def reader_buffered(reader: asyncio.StreamReader) -> int:
    """Bytes a StreamReader holds that the app has not read (asyncio has no public accessor)."""
    buffer: bytearray = reader._buffer  # type: ignore[attr-defined]
    return len(buffer)


def resume_at_next_read(reader: asyncio.StreamReader) -> None:
    """Make ``reader`` call its transport's ``resume_reading()`` at its next read that leaves it
    at or below its limit, as if it had paused the transport itself (its own flag: asyncio has
    no public way)."""
    reader._paused = True  # type: ignore[attr-defined]


def bytes_in_flight(quic: QuicConnection) -> int:
    """Bytes ``quic`` has sent and not yet seen acknowledged or lost (its congestion controller's
    count, whole packets)."""
    return int(quic._loss._cc.bytes_in_flight)


def congestion_state(quic: QuicConnection) -> dict[str, Any]:
    """A snapshot of ``quic``'s sending side (for benchmarks and diagnostics): congestion window
    and bytes in flight (bytes), slow-start threshold (None: still in slow start), smoothed,
    latest and minimum RTT (seconds), the pacer's rate (bytes per second; None: not pacing yet)
    and the probe-timeout count."""
    loss = quic._loss
    cc = loss._cc
    packet_time = loss._pacer.packet_time
    return {
        "cwnd": int(cc.congestion_window),
        "in_flight": int(cc.bytes_in_flight),
        "ssthresh": cc.ssthresh,
        "srtt": float(loss._rtt_smoothed),
        "latest_rtt": float(loss._rtt_latest),
        "min_rtt": float(loss._rtt_min) if loss._rtt_min != float("inf") else None,
        "pacing_rate": quic._max_datagram_size / packet_time if packet_time else None,
        "pto_count": int(loss._pto_count),
    }


@dataclass
class LossCount:
    """What ``quic``'s congestion controller was told since :func:`count_losses`: packets declared
    lost, congestion events among those reports (each halves the window), and packets taken out
    of flight without a congestion event (probe-timeout retransmissions)."""

    packets: int = 0
    events: int = 0
    expired: int = 0


def count_losses(quic: QuicConnection) -> LossCount:
    """Count the losses ``quic`` reports to its congestion controller from now on (wraps the
    controller's ``on_packets_lost`` and ``on_packets_expired`` on this one connection)."""
    cc = quic._loss._cc
    count = LossCount()
    report_lost = cc.on_packets_lost
    report_expired = cc.on_packets_expired

    def on_packets_lost(*, now: float, packets: Iterable[Any]) -> None:
        packets = list(packets)
        recovery_start = getattr(cc, "_congestion_recovery_start_time", None)
        report_lost(now=now, packets=packets)
        count.packets += len(packets)
        if getattr(cc, "_congestion_recovery_start_time", None) != recovery_start:
            count.events += 1

    def on_packets_expired(*, packets: Iterable[Any]) -> None:
        packets = list(packets)
        report_expired(packets=packets)
        count.expired += len(packets)

    cc.on_packets_lost = on_packets_lost  # type: ignore[method-assign]  # per-connection counting hook
    cc.on_packets_expired = on_packets_expired  # type: ignore[method-assign]  # per-connection counting hook
    return count


# --- the asyncio side: protocol and stream transport -----------------------------------------


class QuicProtocol(QuicConnectionProtocol):
    """aioquic's QuicConnectionProtocol as our endpoint drives it, with public names for what
    the rest of the code needs of its internals.

    Set by the owner: ``defer_transmits`` (reads arrive in batches: one transmit after the batch
    instead of one per datagram) and ``endpoint`` (anything with ``gso`` and
    ``send_many(datagrams, max_size)``: the datagrams of one transmit go out together)."""

    endpoint: Any = None
    coalesce_transmits = True  # see datagram_received; off where latency beats CPU (the beacon)
    defer_transmits = False
    reset_received = False  # the other side answered with a stateless reset (RFC 9000 §10.3)

    @property
    def quic(self) -> QuicConnection:
        """The sans-I/O connection this protocol drives."""
        return self._quic

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    @property
    def stream_readers(self) -> dict[int, asyncio.StreamReader]:
        """The readers of the streams still receiving, by stream ID."""
        return self._stream_readers

    @property
    def closing(self) -> bool:
        """True from the moment either side closed the connection (it may still be draining)."""
        return self._quic._close_event is not None

    def transmit_soon(self) -> None:
        """Transmit in the next loop iteration (several writes then go out together)."""
        self._transmit_soon()

    def process_events(self) -> None:
        """Hand the connection's pending events to :meth:`quic_event_received`."""
        self._process_events()

    def mark_connected(self) -> None:
        """Record the handshake as done: aioquic does only for a waiter already waiting, and
        uvloop runs I/O callbacks before a new task's first step, so ``wait_connected()`` right
        after ``connect()`` missed it and hung until its timeout."""
        self._connected = True

    def cancel_timer(self) -> None:
        """Cancel the connection's pending timer (loss detection, idle timeout), if any."""
        if self._timer is not None:
            self._timer.cancel()

    def _create_stream(self, stream_id: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = self.make_stream(stream_id)
        self._stream_readers[stream_id] = reader
        return reader, writer

    def make_stream(self, stream_id: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A reader and writer for a new stream (opened by either side); aioquic's by default."""
        return QuicConnectionProtocol._create_stream(self, stream_id)

    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        # aioquic transmits after every datagram: a bulk receiver then builds an ACK and runs a
        # full datagrams_to_send() per packet. uvloop hands over all datagrams waiting in the
        # socket in one go; one transmit after them acknowledges them together. (asyncio's own
        # loop reads one datagram per iteration: there, deferring only adds an iteration.)
        self._quic.receive_datagram(data, addr, now=self._loop.time())  # type: ignore[arg-type]  # aioquic's NetworkAddress is our tuple
        self._process_events()
        if self.coalesce_transmits and self.defer_transmits:
            self._transmit_soon()
        else:
            self.transmit()

    def transmit(self) -> None:
        endpoint = self.endpoint
        if endpoint is None or not endpoint.gso or not self.coalesce_transmits:
            super().transmit()  # the beacon (latency first) keeps aioquic's own transmit
            return
        # as aioquic's transmit, but the datagrams go out together (GSO, see Endpoint.send_many)
        self._transmit_task = None
        datagrams = self._quic.datagrams_to_send(now=self._loop.time())
        if datagrams:
            endpoint.send_many(datagrams, self._quic._max_datagram_size)
        timer_at = self._quic.get_timer()
        if self._timer is not None and self._timer_at != timer_at:
            self._timer.cancel()
            self._timer = None
        if self._timer is None and timer_at is not None:
            self._timer = self._loop.call_at(timer_at, self._handle_timer)
        self._timer_at = timer_at

    def reset_tokens(self) -> list[bytes]:
        """The stateless reset tokens the other side gave for its connection IDs (in use and spare)."""
        return peer_reset_tokens(self._quic)

    def stateless_reset(self) -> None:
        """A stateless reset for this connection arrived: it is over, without sending anything
        (RFC 9000 §10.3.1). aioquic 1.7.2 does not detect resets itself: end it as its idle
        timer would, with its own close procedure."""
        quic = self._quic
        if self.reset_received or quic._close_event is not None and quic._close_at is None:
            return
        self.reset_received = True
        quic._close_event = events.ConnectionTerminated(error_code=0, frame_type=None, reason_phrase="stateless reset")
        quic._close_end()
        self._process_events()
        self.transmit()  # sends nothing once terminated; cancels the timer


class StreamAdapter(QuicStreamAdapter):
    """aioquic's stream transport, with public names for what our subclasses need of it."""

    protocol: QuicProtocol

    def unacknowledged(self) -> int:
        """Bytes written on this stream that the peer has not acknowledged yet (called on every
        write: :func:`unacked_bytes` inlined)."""
        stream = self.protocol._quic._streams.get(self.stream_id)
        if stream is None:
            return 0
        sender = stream.sender
        return sender._buffer_stop - sender._buffer_start

    def mark_closing(self) -> None:
        """Nothing more may be written (the stream was reset or finished)."""
        self._closing = True


# --- receive credit, reassembly, anti-amplification (QuicConnection mixins) ------------------


class SlidingCredit(QuicConnection):
    """Receive credit that follows what was consumed, not what arrived.

    aioquic doubles a stream's (and the connection's) receive window whenever half of it has
    *arrived*, whatever was consumed, so a slow consumer lets the sender fill our memory without
    bound. Here the windows slide: the other side may send at most ``stream_window`` bytes per
    stream, ``connection_window`` per connection, beyond what was consumed; credit is re-granted
    in steps of half a window. ``unread(stream_id)`` (``unread(None)``: all streams) gives the
    bytes received but not consumed; a subclass or the owner provides it (e.g. as
    :meth:`received_unconsumed`). Runs for every packet sent: keep it cheap."""

    stream_window = 4 * 1024 * 1024
    connection_window = 16 * 1024 * 1024
    unread: Callable[[int | None], int]

    def received_unconsumed(self, stream_id: int | None) -> int:
        """Bytes aioquic received that it has not yet handed out as events (gaps count: what
        lies below the highest offset received), on one stream or on all."""
        if stream_id is None:
            return sum(s.receiver.highest_offset - s.receiver.starting_offset() for s in self._streams.values())
        stream = self._streams.get(stream_id)
        return 0 if stream is None else stream.receiver.highest_offset - stream.receiver.starting_offset()

    def _write_connection_limits(self, builder: Any, space: Any) -> None:
        max_data = self._local_max_data
        window = self.connection_window
        # unread() may walk every stream: ask only when the credit could move even if all was read
        if max_data.used + window - max_data.value >= window // 2:
            target = max_data.used - self.unread(None) + window
            if target - max_data.value >= window // 2:
                max_data.value = target
        # the base class would double the window on arrival; hide the arrival count from it
        used, max_data.used = max_data.used, 0
        try:
            super()._write_connection_limits(builder, space)
        finally:
            max_data.used = used

    def _write_stream_limits(self, builder: Any, space: Any, stream: QuicStream) -> None:
        # aioquic's, without its doubling on arrival
        window = self.stream_window
        highest = stream.receiver.highest_offset
        if stream.max_stream_data_local and highest + window - stream.max_stream_data_local >= window // 2:
            target = highest - self.unread(stream.stream_id) + window
            if target - stream.max_stream_data_local >= window // 2:
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


class BoundedReassembly(QuicConnection):
    """Out-of-order data kept in at most ``max_stream_gaps`` fragments per stream, CRYPTO data in
    at most ``max_crypto_pending`` bytes per epoch (aioquic allows 512 KiB); beyond, the
    connection closes (PROTOCOL_VIOLATION, CRYPTO_BUFFER_EXCEEDED)."""

    max_stream_gaps = 16
    max_crypto_pending = 16 * 1024

    def _handle_stream_frame(self, context: Any, frame_type: int, buf: Buffer) -> None:
        super()._handle_stream_frame(context, frame_type, buf)
        for stream in self._streams.values():
            if len(stream.receiver._ranges) > self.max_stream_gaps:
                raise QuicConnectionError(
                    error_code=QuicErrorCode.PROTOCOL_VIOLATION,
                    frame_type=frame_type,
                    reason_phrase="too many gaps in stream data",
                )

    def _handle_crypto_frame(self, context: Any, frame_type: int, buf: Buffer) -> None:
        start = buf.tell()
        offset = buf.pull_uint_var()
        length = buf.pull_uint_var()
        buf.seek(start)
        stream = self._crypto_streams[context.epoch]
        if offset + length - stream.receiver.starting_offset() > self.max_crypto_pending:
            raise QuicConnectionError(
                error_code=QuicErrorCode.CRYPTO_BUFFER_EXCEEDED,
                frame_type=frame_type,
                reason_phrase="too much crypto buffering",
            )
        super()._handle_crypto_frame(context, frame_type, buf)


class AmplificationLimit(QuicConnection):
    """Nothing sent beyond 3x what an unvalidated address sent (RFC 9000 §8.1): aioquic applies
    that limit except to its CONNECTION_CLOSE, which then is dropped silently here (counted in
    ``amplification_dropped``)."""

    amplification_dropped = 0  # bytes not sent to stay within 3x

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Any]]:
        datagrams = super().datagrams_to_send(now)
        path = self._network_paths[0] if self._network_paths else None
        if path is None or path.is_validated or not datagrams:
            return datagrams
        # the base class counted them in bytes_sent; give back what is not sent
        while datagrams and path.bytes_sent > 3 * path.bytes_received:
            dropped = datagrams.pop()[0]
            path.bytes_sent -= len(dropped)
            self.amplification_dropped += len(dropped)
        return datagrams


# --- path-MTU probes (a QuicConnection mixin) ------------------------------------------------


class SizeProbe:
    """One probe in flight (identity matters: a superseded probe's delivery is ignored)."""

    __slots__ = ("size",)

    def __init__(self, size: int) -> None:
        self.size = size


class SizeProbing(QuicConnection):
    """Sends path-MTU probes: a PING padded to exactly the probed size, encrypted like any
    packet, ahead of the application data of one ``datagrams_to_send``. It is not counted in
    flight (its loss is no congestion signal). The policy is the subclass's:

    - :meth:`next_probe_size`: asked at every ``datagrams_to_send``; a size to probe, or None;
    - :meth:`size_probe_sent`: the probe left (``full``: in a datagram of exactly its size);
    - :meth:`size_probe_delivered`: it was acknowledged or lost.
    """

    _probe_to_write: tuple[int, int] | None = None

    @property
    def datagram_size(self) -> int:
        """The size of the datagrams this side sends now."""
        return self._max_datagram_size

    def set_datagram_size(self, size: int) -> None:
        set_max_datagram_size(self, size)

    def ready_to_probe(self) -> bool:
        """The handshake is confirmed and nobody is closing: 1-RTT packets may go."""
        return bool(self._handshake_confirmed) and not self._close_pending and self._close_event is None

    def next_probe_size(self) -> int | None:
        return None

    def size_probe_sent(self, probe: SizeProbe, full: bool) -> None:
        pass

    def size_probe_delivered(self, delivery: QuicDeliveryState, probe: SizeProbe) -> None:
        pass

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Any]]:
        size = self.next_probe_size()
        if size is None:
            return super().datagrams_to_send(now)
        # the builder's buffer is sized from _max_datagram_size when datagrams_to_send creates
        # it: make it the probe's size; _write_application writes the probe first, then puts
        # the usual size back for every other datagram
        normal = self._max_datagram_size
        self._max_datagram_size = size
        self._probe_to_write = (size, normal)
        try:
            return super().datagrams_to_send(now)
        finally:
            self._max_datagram_size = normal
            self._probe_to_write = None

    def _write_application(self, builder: Any, network_path: Any, now: float) -> None:
        if self._probe_to_write is not None:
            size, normal = self._probe_to_write
            self._probe_to_write = None
            self._max_datagram_size = normal
            try:
                self._write_size_probe(builder, size)
            finally:
                builder._buffer_capacity = normal
        super()._write_application(builder, network_path, now)

    def _write_size_probe(self, builder: Any, size: int) -> None:
        crypto = self._cryptos[tls.Epoch.ONE_RTT]
        if not crypto.send.is_valid():
            return
        # the probe is not congestion-controlled (one at a time, never counted in flight): give
        # it room in the builder's flight budget, and take it back for the packets after it
        budget = builder.max_flight_bytes
        if budget is not None:
            builder.max_flight_bytes = budget + size
        builder.start_packet(QuicPacketType.ONE_RTT, crypto)
        probe = SizeProbe(size)
        builder.start_frame(QuicFrameType.PING, capacity=1, handler=self.size_probe_delivered, handler_args=(probe,))
        packet = builder._packet
        builder._datagram_needs_padding = True
        builder._end_packet()
        packet.in_flight = False  # a lost probe is no sign of congestion (RFC 8899 section 3)
        sent = builder._datagrams[-1] if builder._datagrams else b""
        if budget is not None:
            builder.max_flight_bytes = budget
            builder._flight_bytes -= packet.sent_bytes
        self.size_probe_sent(probe, len(sent) == size)


# --- the beacon's memory diet (see beacon.quic_tuning for what it saves) ----------------------

CONNECTION_ID_LIMIT = 2  # RFC 9000 18.2: active_connection_id_limit default and minimum

_frame_tables_shared = False


def share_frame_tables() -> None:
    """Process-wide and idempotent: memoize aioquic's ``EPOCHS()``, so that every connection's
    frame-dispatch table shares the same frozensets (same values)."""
    global _frame_tables_shared
    if _frame_tables_shared:
        return
    _frame_tables_shared = True
    from aioquic.quic import connection as quic_connection

    epochs = getattr(quic_connection, "EPOCHS", None)
    if callable(epochs) and not hasattr(epochs, "cache_info"):
        quic_connection.EPOCHS = functools.lru_cache(maxsize=None)(epochs)


def _diet_hooks_present() -> bool:
    probe = QuicConnection.__init__.__code__.co_names
    return all(
        name in probe for name in ("_crypto_buffers", "_local_active_connection_id_limit", "_host_cids", "_cryptos")
    ) and hasattr(QuicConnection, "_replenish_connection_ids")


DIET_AVAILABLE = _diet_hooks_present()  # off (every diet function a no-op) if the main hooks are gone


def _replenish_capped(quic: QuicConnection) -> None:
    """aioquic's ``_replenish_connection_ids`` with at most :data:`CONNECTION_ID_LIMIT` IDs."""
    limit = min(CONNECTION_ID_LIMIT, quic._remote_active_connection_id_limit)
    while len(quic._host_cids) < limit:
        quic._host_cids.append(
            QuicConnectionId(
                cid=os.urandom(quic._configuration.connection_id_length),
                sequence_number=quic._host_cid_seq,
                stateless_reset_token=os.urandom(16),
            )
        )
        quic._host_cid_seq += 1


class _CappedReplenish:
    """Bound replacement for ``quic._replenish_connection_ids`` (a slotted callable is smaller
    than a ``functools.partial``)."""

    __slots__ = ("quic",)

    def __init__(self, quic: QuicConnection) -> None:
        self.quic = quic

    def __call__(self) -> None:
        _replenish_capped(self.quic)
        steer = getattr(self.quic, "_steer_cids", None)  # see first_byte_connection_class
        if steer is not None:
            steer()  # new IDs carry the worker's index too, before anyone sees them


class _TokenedReplenish:
    """``_replenish_connection_ids`` that then gives each new connection ID the stateless reset
    token ``token_for(cid)`` (before it is sent in a NEW_CONNECTION_ID frame)."""

    __slots__ = ("inner", "quic", "token_for")

    def __init__(self, inner: Any, quic: QuicConnection, token_for: Any) -> None:
        self.inner = inner
        self.quic = quic
        self.token_for = token_for

    def __call__(self) -> None:
        self.inner()
        for connection_id in self.quic._host_cids:
            if not connection_id.was_sent:
                connection_id.stateless_reset_token = self.token_for(connection_id.cid)


def prepare_server_connection(quic: QuicConnection) -> None:
    """Before the handshake: ask for and issue at most :data:`CONNECTION_ID_LIMIT` connection
    IDs (aioquic: 8; each is an object and an entry in the endpoint's routing table)."""
    if not DIET_AVAILABLE:
        return
    quic._local_active_connection_id_limit = CONNECTION_ID_LIMIT
    # an instance attribute shadows the method; aioquic calls self._replenish_connection_ids()
    quic._replenish_connection_ids = _CappedReplenish(quic)  # type: ignore[method-assign]  # an instance override of aioquic's method


def derive_reset_tokens(quic: QuicConnection, token_for: Callable[[bytes], bytes]) -> None:
    """Before the handshake of a server connection: every connection ID it issues carries the
    stateless reset token ``token_for(cid)`` (aioquic draws random ones), so a restarted beacon
    with the same key can reset connections it no longer knows (see discretpeer.stateless_reset).
    Call after :func:`prepare_server_connection`."""
    if not hasattr(quic, "_host_cids") or not hasattr(quic, "_replenish_connection_ids"):
        return
    first = quic._host_cids[0]
    first.stateless_reset_token = token_for(first.cid)
    inner = quic._replenish_connection_ids
    quic._replenish_connection_ids = _TokenedReplenish(inner, quic, token_for)  # type: ignore[method-assign]  # an instance override of aioquic's method


def first_byte_connection_class(base: type[QuicConnection], first_byte: int) -> type[QuicConnection]:
    """``base`` whose server-chosen connection IDs all start with the byte ``first_byte``
    (rewritten before the endpoint or the peer sees them; also the initial source connection ID
    of the transport parameters)."""

    class Steered(base):  # type: ignore[valid-type,misc]  # a class built on a base chosen at run time
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._steer_cids()
            self._local_initial_source_connection_id = self.host_cid  # the transport parameter

        def _replenish_connection_ids(self) -> None:
            super()._replenish_connection_ids()
            self._steer_cids()

        def _steer_cids(self) -> None:
            for cid in self._host_cids:
                if cid.cid[0] != first_byte:  # new: rewritten before the endpoint or the peer sees it
                    cid.cid = bytes([first_byte]) + cid.cid[1:]
            self.host_cid = self._host_cids[0].cid

    Steered.__name__ = f"Steered{first_byte}{base.__name__}"
    return Steered


class PostHandshakeTLS:
    """What a server connection's ``tls`` still needs once the handshake is complete.

    aioquic's server-side ``tls.Context`` in ``SERVER_POST_HANDSHAKE`` answers every message
    with ``AlertUnexpectedMessage`` and writes nothing; so does this stub (at the first byte
    rather than once a whole message is buffered: the connection closes the same way)."""

    __slots__ = ("state", "alpn_negotiated", "early_data_accepted", "session_resumed", "client_random")

    def __init__(self, context: tls.Context) -> None:
        self.state = context.state
        self.alpn_negotiated = context.alpn_negotiated
        self.early_data_accepted = context.early_data_accepted
        self.session_resumed = context.session_resumed
        self.client_random = context.client_random

    def handle_message(self, input_data: bytes, output_buf: object) -> None:
        if input_data:
            raise tls.AlertUnexpectedMessage


class OnDemandAEAD(AEAD):
    """aioquic's AEAD whose OpenSSL object exists only while a packet is sealed or opened."""

    def __init__(self, cipher_name: bytes, key: bytes, iv: bytes) -> None:
        # not super().__init__: that builds the object this class exists not to keep
        self._chacha = cipher_name == b"chacha20-poly1305"
        self._key = key
        self._iv = int.from_bytes(iv, "big")

    @property
    def _aead(self) -> Any:  # type: ignore[override]  # a per-packet object instead of AEAD's attribute
        return aead.ChaCha20Poly1305(self._key) if self._chacha else aead.AESGCM(self._key)


class OnDemandHeaderProtection(HeaderProtection):
    """aioquic's HeaderProtection whose cipher context is built per packet."""

    def __init__(self, cipher_name: bytes, key: bytes) -> None:
        self._is_chacha20 = cipher_name == b"chacha20"
        self._key = key

    def _mask(self, sample: bytes) -> bytes:
        if self._is_chacha20:  # the sample is the ChaCha20 counter + nonce
            return Cipher(algorithm=algorithms.ChaCha20(self._key, sample), mode=None).encryptor().update(bytes(5))
        return Cipher(algorithm=algorithms.AES(self._key), mode=modes.ECB()).encryptor().update(sample)


def _ciphers_on_demand(context: CryptoContext) -> None:
    if context.aead is None or context.secret is None or context.cipher_suite is None:
        return
    if isinstance(context.aead, OnDemandAEAD):
        return
    hp_name, aead_name = CIPHER_SUITES[context.cipher_suite]
    if context.version is None:
        return
    key, iv, hp_key = derive_key_iv_hp(
        cipher_suite=context.cipher_suite, secret=context.secret, version=context.version
    )
    context.aead = OnDemandAEAD(aead_name, key, iv)
    context.hp = OnDemandHeaderProtection(hp_name, hp_key)


_DEAD_PAIR = CryptoPair()  # torn down from the start: aead is None both ways
_DEAD_STREAM = QuicStream()  # an empty crypto stream that never receives or sends again
_DEAD_EPOCHS = (tls.Epoch.INITIAL, tls.Epoch.ZERO_RTT, tls.Epoch.HANDSHAKE)


def _is_dead(pair: Any) -> bool:
    return pair.recv.aead is None and pair.send.aead is None


class ClosedFlag:
    """Stands in for QuicConnectionProtocol's ``_closed`` Event: aioquic only calls ``set()``;
    an Event exists only once somebody awaits ``wait()``."""

    __slots__ = ("_set", "_event")

    def __init__(self) -> None:
        self._set = False
        self._event: asyncio.Event | None = None

    def set(self) -> None:
        self._set = True
        if self._event is not None:
            self._event.set()

    def is_set(self) -> bool:
        return self._set

    async def wait(self) -> bool:
        if self._set:
            return True
        if self._event is None:
            self._event = asyncio.Event()
        return await self._event.wait()


def lighten_protocol(protocol: QuicConnectionProtocol) -> None:
    """At creation of a server-side protocol (before any event): its ``wait_closed()`` Event
    becomes a :class:`ClosedFlag`."""
    closed = getattr(protocol, "_closed", None)
    if isinstance(closed, asyncio.Event) and not closed.is_set():
        protocol._closed = ClosedFlag()  # type: ignore[assignment]  # a light stand-in with the same calls


def trim_after_handshake(quic: QuicConnection) -> None:
    """After ``HandshakeCompleted`` on a server connection: drop what only the handshake used
    (TLS output buffers and context, the discarded epochs' crypto state, the empty DATAGRAM
    queue, the crypto pairs' qlog callbacks)."""
    if not DIET_AVAILABLE or quic._is_client:
        return
    buffers = quic._crypto_buffers
    for epoch in list(buffers):
        buffers[epoch] = Buffer(capacity=0)
    context = quic.tls
    if isinstance(context, tls.Context) and context.state == tls.State.SERVER_POST_HANDSHAKE:
        quic.tls = PostHandshakeTLS(context)  # type: ignore[assignment]  # a light stand-in for the finished TLS context
    if getattr(quic, "_datagrams_pending", None) is not None and not quic._datagrams_pending:
        quic._datagrams_pending = ()  # type: ignore[assignment]  # an immutable empty stand-in, never appended to after the handshake
    # a server discards the Initial and Handshake epochs when its handshake completes
    spaces = quic._spaces
    cryptos = quic._cryptos
    streams = quic._crypto_streams
    for epoch in _DEAD_EPOCHS:
        pair = cryptos.get(epoch)
        if pair is None or not _is_dead(pair):
            continue
        space = spaces.get(epoch)
        if epoch != tls.Epoch.ZERO_RTT and (space is None or not space.discarded):
            continue
        cryptos[epoch] = _DEAD_PAIR
        if epoch in streams:
            streams[epoch] = _DEAD_STREAM
    initial = getattr(quic, "_cryptos_initial", None)
    if initial and all(_is_dead(pair) for pair in initial.values()):
        quic._cryptos_initial = dict.fromkeys(initial, _DEAD_PAIR)
    for pair in quic._cryptos.values():
        for crypto_context in (pair.recv, pair.send):
            crypto_context._setup_cb = NoCallback
            crypto_context._teardown_cb = NoCallback


def release_ciphers(quic: QuicConnection) -> None:
    """From now on, rebuild the 1-RTT ciphers of a server connection per packet from the kept
    key bytes (OpenSSL keeps ~7 KB per connection otherwise). Safe on any live connection."""
    if not DIET_AVAILABLE or quic._is_client:
        return
    cryptos = getattr(quic, "_cryptos", None)
    one_rtt = cryptos.get(tls.Epoch.ONE_RTT) if cryptos else None
    if one_rtt is not None:
        _ciphers_on_demand(one_rtt.recv)
        _ciphers_on_demand(one_rtt.send)


def dismantle(protocol: QuicConnectionProtocol) -> None:
    """Break the reference cycles of a terminated connection, so that reference counting frees it
    at once: aioquic's QuicConnection refers to itself through ~35 bound methods (its frame
    table, loss-recovery and TLS callbacks), so without this only the cyclic garbage collector
    can free it. Call it after the connection's last event was handled; the protocol must not
    be used afterwards (its timers are cancelled here)."""
    for name in ("_timer", "_transmit_task"):
        handle = getattr(protocol, name, None)
        if handle is not None:
            handle.cancel()
            setattr(protocol, name, None)
    quic = getattr(protocol, "_quic", None)
    if quic is not None:
        quic.__dict__.clear()


# --- checking the list against the installed aioquic (tests/unit/test_aioquic.py) ------------


def _names_of(cls: type) -> set[str]:
    """The attributes ``cls`` has or its methods' code mentions (instance attributes included)."""
    import inspect
    import types

    names = set(dir(cls))
    codes = [
        member.__code__
        for klass in inspect.getmro(cls)
        for member in vars(klass).values()
        if isinstance(member, types.FunctionType)
    ]
    while codes:
        code = codes.pop()
        names.update(code.co_names)
        codes.extend(const for const in code.co_consts if isinstance(const, types.CodeType))
    return names


def missing_private_names(api: dict[str, tuple[str, ...]] | None = None) -> dict[str, list[str]]:
    """The names of ``api`` (default :data:`PRIVATE_API`) the installed package no longer has, by
    class (discretpeer._qh3 checks its own list with it)."""
    import importlib

    missing: dict[str, list[str]] = {}
    for qualified, names in (PRIVATE_API if api is None else api).items():
        module_name, _, class_name = qualified.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module_name), class_name)
        except (ImportError, AttributeError):
            missing[qualified] = list(names) or [class_name]
            continue
        if not names:
            continue
        known = _names_of(cls)
        gone = [name for name in names if name not in known]
        if gone:
            missing[qualified] = gone
    return missing
