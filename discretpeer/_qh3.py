"""Peer connections on qh3 (``Tuning(quic_stack="qh3")``): the twin of :mod:`discretpeer._aioquic`.

qh3 2.1 is an aioquic fork whose connection state machine is Rust (``qh3._hazmat.QuicConnectionCore``)
behind a thin Python ``qh3.quic.connection.QuicConnection`` with aioquic's sans-I/O API. Its
per-packet cost is a few microseconds instead of aioquic's ~40; the beacon connections of a peer
stay on aioquic (same socket, same :class:`discretpeer.endpoint.Endpoint`).

:class:`Qh3Connection` wraps a qh3 connection so that the aioquic protocol layer we already run
(``aioquic.asyncio.QuicConnectionProtocol`` via :class:`discretpeer._aioquic.QuicProtocol`, the
endpoint, :class:`discretpeer.connection.PeerProtocol`) drives it unchanged:

- it takes an aioquic ``QuicConfiguration`` (ours: :class:`discretpeer.path_mtu.SizedQuicConfiguration`)
  and builds qh3's from it (certificate and key converted, Ed25519 offered by the client);
- qh3's events become aioquic's event classes (the protocol layer dispatches on ``isinstance``);
- a virtual route address (``("discretpeer-path", n)``, see :mod:`discretpeer.paths`) becomes a
  reserved IPv4 address for the Rust core (it parses every address), and back on the way out;
- it mimics the few aioquic-internal names the protocol layer reads: ``_close_event``,
  ``_max_datagram_size``, ``_handshake_complete``, ``_stream_can_send`` (aioquic's stream
  adapter). What the qh3 path lacks: benchmarks/README.md, "The qh3 port".

qh3-private names used here, like :data:`discretpeer._aioquic.PRIVATE_API`: ``QuicConnection._core``
(``QuicConnectionCore``: ``smoothed_rtt``, ``bytes_in_flight``, ``congestion_window``,
``latest_rtt``, ``pto_count``, ``loss_total``, ``active_path``, ``state``), ``_close_event``,
``_handshake_complete``, ``_stream_can_send``, and ``_drain_core`` (overridden: the credit hold).
"""

from __future__ import annotations

import ipaddress
import logging
import math
from collections.abc import Callable
from importlib import metadata
from typing import Any

from aioquic.quic import events as aio_events
from aioquic.quic.configuration import QuicConfiguration as AioquicConfiguration
from cryptography.hazmat.primitives import serialization
from qh3 import tls as qh3_tls
from qh3._hazmat import X25519KeyExchange
from qh3.quic import events as qh3_events
from qh3.quic.configuration import QuicConfiguration as Qh3Configuration
from qh3.quic.connection import QuicConnection as Qh3QuicConnection
from qh3.quic.connection import QuicConnectionError as Qh3ConnectionError
from qh3.quic.packet import QuicErrorCode

from discretpeer.addresses import Addr
from discretpeer.path_mtu import AIOQUIC_MAX_DATAGRAM, BASE_DATAGRAM
from discretpeer.quic_stack import NativeQuicConnection
from discretpeer.send_pacer import SendPacer
from discretpeer.tuning import tuning_of

TESTED = ("2.1.0",)
PRIVATE_API: dict[str, tuple[str, ...]] = {
    "qh3.quic.connection.QuicConnection": (
        "_close_event",
        "_core",
        "_drain_core",
        "_handshake_complete",
        "_stream_can_send",
    ),
    # a private module's key exchange: warm_up() makes one
    "qh3._hazmat.X25519KeyExchange": ("public_key",),
    # the Rust core: a private module's (public) properties
    "qh3._hazmat.QuicConnectionCore": (
        "active_path",
        "bytes_in_flight",
        "congestion_window",
        "latest_rtt",
        "loss_total",
        "poll_transmit",  # one datagram at a time, as discretpeer.send_pacer lets them go
        "pto_count",
        "pto_total",
        "smoothed_rtt",
        "state",
    ),
}

# The datagram size of a qh3 peer connection is fixed when its core starts: qh3's core probes the
# path MTU only as a client, on a ladder up to 1472, and has neither a setter for a live
# connection's size nor black-hole detection (measured: a client that probed up to 1472 and then
# meets a 1400-byte link, e.g. on falling back to a relay, never sends another packet that arrives).
# So the size is one that every route of the connection carries, direct or relayed (+ 9 bytes),
# over any Internet path: 1350, as QUIC deployments use. A user who knows the paths gives
# Peer(max_datagram_size=N) below the default cap and gets N from the first packet.
QH3_DATAGRAM_SIZE = BASE_DATAGRAM
MIN_DATAGRAM_SIZE = 1200  # QUIC's minimum (RFC 9000 section 14)
_VIRTUAL_NETWORK = int(ipaddress.IPv4Address("240.0.0.0"))  # 240.0.0.0/4: reserved, never routed


class _OrdinaryCloseFilter(logging.Filter):
    """qh3's wrapper logs every close the peer initiates as a WARNING ("Native peer close: ...",
    qh3/quic/connection.py ``_drain_core``); for us that is an ordinary end (the app is told the
    reason). Protocol errors still get through."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (isinstance(record.msg, str) and record.msg.startswith("Native peer close"))


logging.getLogger("quic").addFilter(_OrdinaryCloseFilter())  # qh3's logger (aioquic's has the same name)


def qh3_datagram_size(cap: int) -> int:
    """The size a qh3 peer connection sends from its first packet (before the route's limit):
    1350, or ``cap`` (``Peer(max_datagram_size)``) when the user set one below the default."""
    return cap if cap < AIOQUIC_MAX_DATAGRAM else QH3_DATAGRAM_SIZE


def warm_up() -> None:
    """Pay qh3's one-time cost now: its crypto library initialises on the first key exchange of
    the process (~60 ms, measured), which would otherwise fall in the first ClientHello."""
    X25519KeyExchange().public_key()


def installed_version() -> str | None:
    try:
        return metadata.version("qh3")
    except metadata.PackageNotFoundError:
        return None


# --- configuration ---------------------------------------------------------------------------


def _qh3_identity(certificate: Any, private_key: Any) -> tuple[Any, Any]:
    """qh3's certificate and private key objects for cryptography's (through PEM, ~0.1 ms)."""
    cert_pem = certificate.public_bytes(serialization.Encoding.PEM)
    key_pem = private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return qh3_tls.load_pem_x509_certificates(cert_pem)[0], qh3_tls.load_pem_private_key(key_pem)


def qh3_configuration(configuration: AioquicConfiguration, datagram_size: int) -> Qh3Configuration:
    """qh3's configuration for a peer connection configured (for aioquic) as ``configuration``."""
    qh3_config = Qh3Configuration(
        alpn_protocols=configuration.alpn_protocols,
        connection_id_length=configuration.connection_id_length,
        idle_timeout=configuration.idle_timeout,
        is_client=configuration.is_client,
        max_data=configuration.max_data,
        max_stream_data=configuration.max_stream_data,
        max_datagram_size=datagram_size,
        probe_datagram_size=False,  # see QH3_DATAGRAM_SIZE
        verify_mode=configuration.verify_mode,
        server_name=configuration.server_name,
    )
    if configuration.is_client:
        # our certificates are Ed25519 (certs.create_bundle): qh3's client leaves EdDSA out by default
        qh3_config.signature_algorithms = [
            qh3_tls.SignatureAlgorithm.ED25519,
            qh3_tls.SignatureAlgorithm.ECDSA_SECP256R1_SHA256,
            qh3_tls.SignatureAlgorithm.RSA_PSS_RSAE_SHA256,
        ]
    if configuration.certificate is not None and configuration.private_key is not None:
        qh3_config.certificate, qh3_config.private_key = _qh3_identity(
            configuration.certificate, configuration.private_key
        )
    return qh3_config


# --- events ----------------------------------------------------------------------------------


def _translate(event: qh3_events.QuicEvent) -> aio_events.QuicEvent:
    """qh3's event as aioquic's class (the protocol layer dispatches on aioquic's classes)."""
    if isinstance(event, qh3_events.StreamDataReceived):
        return aio_events.StreamDataReceived(data=event.data, end_stream=event.end_stream, stream_id=event.stream_id)
    if isinstance(event, qh3_events.ConnectionIdIssued):
        return aio_events.ConnectionIdIssued(connection_id=event.connection_id)
    if isinstance(event, qh3_events.ConnectionIdRetired):
        return aio_events.ConnectionIdRetired(connection_id=event.connection_id)
    if isinstance(event, qh3_events.ConnectionTerminated):
        return aio_events.ConnectionTerminated(
            error_code=event.error_code, frame_type=event.frame_type, reason_phrase=event.reason_phrase
        )
    if isinstance(event, qh3_events.HandshakeCompleted):
        return aio_events.HandshakeCompleted(
            alpn_protocol=event.alpn_protocol,
            early_data_accepted=event.early_data_accepted,
            session_resumed=event.session_resumed,
        )
    if isinstance(event, qh3_events.PingAcknowledged):
        return aio_events.PingAcknowledged(uid=event.uid)
    if isinstance(event, qh3_events.ProtocolNegotiated):
        return aio_events.ProtocolNegotiated(alpn_protocol=event.alpn_protocol)
    if isinstance(event, qh3_events.StreamReset):
        return aio_events.StreamReset(error_code=event.error_code, stream_id=event.stream_id)
    if isinstance(event, qh3_events.StopSendingReceived):
        return aio_events.StopSendingReceived(error_code=event.error_code, stream_id=event.stream_id)
    if isinstance(event, qh3_events.DatagramFrameReceived):
        return aio_events.DatagramFrameReceived(data=event.data)
    return aio_events.QuicEvent()  # none other exists in qh3 2.1: ignored by every handler


# --- the connection --------------------------------------------------------------------------


class _HeldEvents(Qh3QuicConnection):
    """qh3's connection that stops taking its core's events while ``hold()`` says the app has
    too much unread. qh3's core grants receive credit (consumed + window) as its events are
    taken, and qh3 takes them all after every datagram: without this, a slow reader lets the
    sender fill our memory (71 MB in tests/peer/test_qh3.py's slow reader). Held, the core keeps
    at most one window of data; the connection's end is never held (closing, draining)."""

    hold: Callable[[], bool] | None = None
    holding = False

    def _drain_core(self) -> None:
        hold = self.hold
        if hold is not None and self._handshake_complete and hold():
            core = self._core
            if core is not None and core.state == "connected":
                self.holding = True
                return
        self.holding = False
        super()._drain_core()


class Qh3Connection(NativeQuicConnection):
    """A qh3 connection that the aioquic protocol layer can drive (see the module docstring).

    Built like aioquic's QuicConnection: ``Qh3Connection(configuration=...)`` for a client,
    plus ``original_destination_connection_id`` (and ``retry_source_connection_id``) for a server."""

    def __init__(
        self,
        *,
        configuration: AioquicConfiguration,
        original_destination_connection_id: bytes | None = None,
        retry_source_connection_id: bytes | None = None,
    ) -> None:
        self._datagram_size = qh3_datagram_size(getattr(configuration, "datagram_size_cap", AIOQUIC_MAX_DATAGRAM))
        self.configuration = configuration  # ours, aioquic's class: discretpeer.tuning.tuning_of reads it
        self.inner = _HeldEvents(
            configuration=qh3_configuration(configuration, self._datagram_size),
            original_destination_connection_id=original_destination_connection_id,
            retry_source_connection_id=retry_source_connection_id,
        )
        self.host_cid: bytes = self.inner.host_cid
        self._size_limit: Callable[[], int | None] | None = None
        # virtual route address <-> the IPv4 address the Rust core sees
        self._to_core: dict[Any, tuple[str, int]] = {}
        self._from_core: dict[tuple[str, int], Addr] = {}
        # qh3's core paces with a bucket of a whole congestion window: a window may leave at once
        # when polled (discretpeer.send_pacer)
        self._pacer = SendPacer(self._datagram_size) if tuning_of(self).qh3_pacer else None
        self._paced_until: float | None = None  # the pacer stopped a transmit: poll again then

    # --- addresses ---

    def _core_address(self, addr: Any) -> tuple[str, int]:
        known = self._to_core.get(addr)
        if known is not None:
            return known
        host, port = addr[0], addr[1]
        try:
            ipaddress.ip_address(host.split("%", 1)[0])
            core = (host, port)
        except ValueError:  # a virtual route address: (name, counter)
            core = (str(ipaddress.IPv4Address(_VIRTUAL_NETWORK + (port & 0x0FFFFFFF))), 443)
        self._to_core[addr] = core
        self._from_core[core] = (host, port)
        return core

    # --- aioquic's sans-I/O API, as QuicConnectionProtocol calls it ---

    def connect(self, addr: Any, now: float) -> None:
        self._fit_datagram_size()
        self.inner.connect(self._core_address(addr), now)

    def receive_datagram(self, data: bytes, addr: Any, now: float) -> None:
        if self.inner._core is None:  # noqa: SLF001 - a server's core starts with its first datagram
            self._fit_datagram_size()
        self.inner.receive_datagram(data, self._core_address(addr), now)

    def receive_many_datagrams(self, datagrams: list[bytes], addr: Any, now: float) -> None:
        """Several datagrams of one source at once (one call into the core)."""
        if self.inner._core is None:  # noqa: SLF001 - a server's core starts with its first datagram
            self._fit_datagram_size()
        self.inner.receive_many_datagrams(datagrams, self._core_address(addr), now)

    def receive_gro_buffer(self, buffer: bytes, segment_size: int, addr: Any, now: float) -> None:
        """Several datagrams of one source, coalesced by the kernel (UDP GRO), at once."""
        self.inner.receive_gro_buffer(buffer, segment_size, self._core_address(addr), now)

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Any]]:
        from_core = self._from_core
        pacer = self._pacer
        core = self.inner._core  # noqa: SLF001 - listed in PRIVATE_API
        self._paced_until = None
        if pacer is None or core is None or self.inner._close_event is not None:  # noqa: SLF001 - listed in PRIVATE_API
            # unpaced, and a closing connection's close leaves at once (its owner may be going away)
            return [(data, from_core.get(addr, addr)) for data, addr in self.inner.datagrams_to_send(now)]
        # qh3's own datagrams_to_send polls the core until it has nothing left; the pacer stops
        # earlier. Its allowance is taken once: per datagram, the pacer's calls cost a bulk sender
        # more than the core's poll of the next packet
        pacer.set_rate(core.congestion_window, core.smoothed_rtt or 0.0)
        allowance = pacer.allowance(now)
        limit = math.inf if allowance is None else allowance
        datagrams: list[tuple[bytes, Any]] = []
        append = datagrams.append
        poll = core.poll_transmit
        in_flight = core.bytes_in_flight
        paced = 0
        try:
            while paced < limit:
                transmit = poll(now)
                if transmit is None:
                    break
                data, addr = transmit[0], transmit[1]
                flight = core.bytes_in_flight
                if flight > in_flight:  # only what the congestion window counts is paced: not ACK-only datagrams
                    paced += len(data)
                in_flight = flight
                append((data, from_core.get(addr, addr)))
        except RuntimeError as exc:  # what qh3's wrapper raises for it (QuicConnection._call_core)
            raise Qh3ConnectionError(QuicErrorCode.INTERNAL_ERROR, None, str(exc)) from exc
        if paced:
            pacer.sent(paced, now)
        if paced >= limit:
            self._paced_until = pacer.next_send_time(now)
        return datagrams

    def get_timer(self) -> float | None:
        timer = self.inner.get_timer()
        paced = self._paced_until
        if paced is not None and (timer is None or paced < timer):
            return paced
        return timer

    def handle_timer(self, now: float) -> None:
        self._paced_until = None
        timer = self.inner.get_timer()
        if timer is not None and timer <= now:  # not when only the pacer's time came (see get_timer)
            self.inner.handle_timer(now)

    def next_event(self) -> aio_events.QuicEvent | None:
        event = self.inner.next_event()
        return None if event is None else _translate(event)

    def get_next_available_stream_id(self, is_unidirectional: bool = False) -> int:
        return self.inner.get_next_available_stream_id(is_unidirectional)

    def send_stream_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        try:
            self.inner.send_stream_data(stream_id, data, end_stream)
        except Qh3ConnectionError as exc:  # closed, or the stream was reset: what aioquic raises
            raise RuntimeError(str(exc)) from exc

    def reset_stream(self, stream_id: int, error_code: int) -> None:
        self.inner.reset_stream(stream_id, error_code)

    def stop_stream(self, stream_id: int, error_code: int) -> None:
        self.inner.stop_stream(stream_id, error_code)

    def send_ping(self, uid: int) -> None:
        self.inner.send_ping(uid)

    def send_datagram_frame(self, data: bytes) -> None:
        self.inner.send_datagram_frame(data)

    def change_connection_id(self) -> None:
        self.inner.change_connection_id()

    def request_key_update(self) -> None:
        self.inner.request_key_update()

    def close(self, error_code: int = 0, frame_type: int | None = None, reason_phrase: str = "") -> None:
        self.inner.close(error_code=error_code, frame_type=frame_type, reason_phrase=reason_phrase)

    @property
    def tls(self) -> Any:
        """qh3's TLS context (``key_schedule.derive_secret`` is aioquic's: see discretpeer.auth)."""
        return self.inner.tls

    # --- the datagram size, fixed when the core starts ---

    def limit_datagram_size(self, limit: Callable[[], int | None]) -> None:
        self._size_limit = limit

    def _fit_datagram_size(self) -> None:
        """Before the core exists: no larger than what the route takes (the kernel's MTU for the
        route's next hop; through a relay, minus the relay frame's header)."""
        limit = self._size_limit() if self._size_limit is not None else None
        if limit is not None and limit < self._datagram_size:
            self._datagram_size = max(limit, MIN_DATAGRAM_SIZE)
            self.inner.configuration.max_datagram_size = self._datagram_size
            if self._pacer is not None:
                self._pacer.datagram_size = self._datagram_size

    # --- receive credit that follows the app's reads (see _HeldEvents) ---

    def hold_events_while(self, hold: Callable[[], bool]) -> None:
        """Take no events from the core while ``hold()`` (checked after every datagram)."""
        self.inner.hold = hold

    def release_events(self) -> bool:
        """Take the events held back, unless ``hold()`` still says no; True if any may be new
        (the owner then processes events)."""
        if not self.inner.holding:
            return False
        self.inner._drain_core()  # noqa: SLF001 - _HeldEvents' own override, listed in PRIVATE_API
        return True

    # --- the aioquic-internal names the protocol layer reads (see the module docstring) ---

    @property
    def _close_event(self) -> Any:
        return self.inner._close_event  # noqa: SLF001 - qh3's wrapper keeps aioquic's name; listed in PRIVATE_API

    @property
    def _handshake_complete(self) -> bool:
        return bool(self.inner._handshake_complete)  # noqa: SLF001 - listed in PRIVATE_API

    @property
    def _max_datagram_size(self) -> int:
        return self.datagram_size()

    def _stream_can_send(self, stream_id: int) -> bool:
        return bool(self.inner._stream_can_send(stream_id))  # noqa: SLF001 - listed in PRIVATE_API

    # --- NativeQuicConnection: what discretpeer reads of a connection ---

    @property
    def _core(self) -> Any:
        return self.inner._core  # noqa: SLF001 - qh3's Rust core (None before connect / first datagram)

    def handshake_complete(self) -> bool:
        return bool(self.inner._handshake_complete)  # noqa: SLF001 - listed in PRIVATE_API

    def is_closing(self) -> bool:
        return self.inner._close_event is not None  # noqa: SLF001 - listed in PRIVATE_API

    def smoothed_rtt(self) -> float:
        core = self._core
        rtt = core.smoothed_rtt if core is not None else None
        return float(rtt) if rtt else 0.0

    def bytes_in_flight(self) -> int:
        core = self._core
        return int(core.bytes_in_flight) if core is not None else 0

    def datagram_size(self) -> int:
        return self._datagram_size

    def active_path_address(self) -> Addr:
        core = self._core
        if core is None:
            return ("", 0)
        remote = core.active_path[2]
        return self._from_core.get((remote[0], remote[1]), (remote[0], remote[1]))

    def unacked_bytes(self, stream_id: int | None) -> int:
        """Not what aioquic's count is: qh3 tells the bytes queued and not yet sent (per stream)
        and the connection's bytes in flight, not a stream's sent-and-unacknowledged bytes.
        Queued + the connection's flight: exact for one stream, an overestimate with several."""
        if self.inner._close_event is not None:  # noqa: SLF001 - listed in PRIVATE_API
            return 0
        return int(self.inner.get_send_buffer_size(stream_id)) + self.bytes_in_flight()

    def congestion_state(self) -> dict[str, Any]:
        core = self._core
        if core is None:
            return {}
        return {
            "cwnd": int(core.congestion_window),
            "in_flight": int(core.bytes_in_flight),
            "srtt": float(core.smoothed_rtt or 0.0),
            "latest_rtt": float(core.latest_rtt or 0.0),
            "pto_count": int(core.pto_count),
            "pto_total": int(core.pto_total),  # probe timeouts that fired, over the connection's life
            "loss_total": int(core.loss_total),
            "pacing_rate": (self._pacer.rate or None) if self._pacer is not None else None,  # bytes/s (send_pacer)
        }
