"""Memory diet for the beacon's idle QUIC connections (aioquic internals, measured).

An idle beacon connection costs what aioquic keeps for the whole life of a connection, and most
of it only serves the handshake. Measured on aioquic 1.7.2 (``python -m benchmarks``, beacon RSS
per registered idle peer, 10,000 peers): 74 KB without this module, 28.6 KB with it, at the
same CPU per registration. What goes:

- the three 16 KB TLS output buffers (``_crypto_buffers``): a server's TLS writes nothing after
  the handshake (any post-handshake message is refused with an alert before a write);
- the per-connection frozensets of aioquic's frame dispatch table (33 per connection, identical
  in every connection, ~7 KB and ~0.1 ms to build): :func:`install` memoizes aioquic's
  ``EPOCHS()`` for the process, so every connection shares them (same values: frozensets);
- the TLS context (a ~50-attribute object with its key schedule, ephemeral keys, extension
  lists): after the handshake a server's QUIC connection only reads its ``state`` and hands it
  CRYPTO data, which a server refuses with an alert in every case; a small stub does the same;
- the empty deque for outgoing DATAGRAM frames (the beacon never sends any);
- what the discarded Initial, 0-RTT and Handshake epochs leave behind: their torn-down crypto
  pairs and empty crypto streams are replaced by one shared, equally dead instance (aioquic
  only reads them once the epoch is discarded: its packets can no longer be decrypted);
- the protocol's ``asyncio.Event`` for ``wait_closed()`` (760 bytes of empty deque alone): a
  flag that builds the Event only if somebody waits;
- the 1-RTT ciphers: ``cryptography`` keeps ~2.6 KB of OpenSSL state per AES-GCM object and
  ~1 KB per header-protection encryptor, four per connection, outside Python's allocator.
  They are rebuilt from the (kept) key bytes for each packet instead, from a few seconds after
  the handshake on (:func:`release_ciphers`): +~8 us per packet on the beacon's control traffic
  (a keepalive every 10 s per peer), -7 KB per idle connection.
- the logging callbacks (``functools.partial``) of the crypto pairs, which only feed qlog;
- connection IDs: the beacon asks its clients for 2 active connection IDs (the RFC 9000
  default and minimum, instead of aioquic's 8) and issues at most 2 itself: each one is an
  object plus an entry in the endpoint's routing table. A client still has a spare ID.

This relies on aioquic internals (pinned below 1.8 in pyproject.toml): :data:`AVAILABLE` checks
at import that the main ones exist and turns everything off otherwise. Only server-side
connections are trimmed, and only after ``HandshakeCompleted``. :func:`dismantle` (for
terminated connections) lets reference counting free them, see ``BeaconServer.manage_gc``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any

from aioquic import tls
from aioquic._crypto import AEAD, HeaderProtection
from aioquic.buffer import Buffer
from aioquic.quic.connection import QuicConnection, QuicConnectionAdapter, QuicConnectionError, QuicConnectionId
from aioquic.quic.crypto import (
    CIPHER_SUITES,
    INITIAL_CIPHER_SUITE,
    INITIAL_SALT_VERSION_1,
    INITIAL_SALT_VERSION_2,
    CryptoContext,
    CryptoPair,
    NoCallback,
    derive_key_iv_hp,
)
from aioquic.quic.packet import QuicErrorCode, QuicPacketType, QuicProtocolVersion, pull_quic_header
from aioquic.quic.stream import QuicStream
from cryptography.hazmat.primitives.ciphers import Cipher, aead, algorithms, modes

ON_DEMAND_CIPHERS = True  # rebuild 1-RTT ciphers per packet instead of keeping them
MAX_CONNECTION_IDS = 2  # RFC 9000 18.2: active_connection_id_limit default and minimum

_installed = False


def install() -> None:
    """Process-wide and idempotent: share the frame-dispatch frozensets between connections."""
    global _installed
    if _installed:
        return
    _installed = True
    from aioquic.quic import connection as quic_connection

    epochs = getattr(quic_connection, "EPOCHS", None)
    if callable(epochs) and not hasattr(epochs, "cache_info"):
        quic_connection.EPOCHS = functools.lru_cache(maxsize=None)(epochs)


def _hooks_present() -> bool:
    probe = QuicConnection.__init__.__code__.co_names
    return all(
        name in probe for name in ("_crypto_buffers", "_local_active_connection_id_limit", "_host_cids", "_cryptos")
    ) and hasattr(QuicConnection, "_replenish_connection_ids")


AVAILABLE = _hooks_present()


def _replenish_capped(quic: QuicConnection) -> None:
    """aioquic's ``_replenish_connection_ids`` with at most :data:`MAX_CONNECTION_IDS` IDs."""
    import os

    limit = min(MAX_CONNECTION_IDS, quic._remote_active_connection_id_limit)
    while len(quic._host_cids) < limit:
        quic._host_cids.append(
            QuicConnectionId(
                cid=os.urandom(quic._configuration.connection_id_length),
                sequence_number=quic._host_cid_seq,
                stateless_reset_token=os.urandom(16),
            )
        )
        quic._host_cid_seq += 1


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


def lighten_protocol(protocol: Any) -> None:
    """At creation of a server-side protocol (before any event)."""
    closed = getattr(protocol, "_closed", None)
    if isinstance(closed, asyncio.Event) and not closed.is_set():
        protocol._closed = ClosedFlag()


class _CappedReplenish:
    """Bound replacement for ``quic._replenish_connection_ids`` (a slotted callable is smaller
    than a ``functools.partial``)."""

    __slots__ = ("quic",)

    def __init__(self, quic: QuicConnection) -> None:
        self.quic = quic

    def __call__(self) -> None:
        _replenish_capped(self.quic)
        steer = getattr(self.quic, "_steer_cids", None)  # a worker's connection (beacon.workers)
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


def derive_reset_tokens(quic: QuicConnection, token_for: Any) -> None:
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


def prepare_server_connection(quic: QuicConnection) -> None:
    """Before the handshake: ask for and issue fewer connection IDs."""
    if not AVAILABLE:
        return
    quic._local_active_connection_id_limit = MAX_CONNECTION_IDS
    # an instance attribute shadows the method; aioquic calls self._replenish_connection_ids()
    quic._replenish_connection_ids = _CappedReplenish(quic)  # type: ignore[method-assign]  # an instance override of aioquic's method


def trim_after_handshake(quic: QuicConnection) -> None:
    """After ``HandshakeCompleted`` on a server connection: drop what only the handshake used."""
    if not AVAILABLE or quic._is_client:
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
    """Once a connection has settled (the beacon calls this a few seconds after the handshake,
    so that the registration's own packets still use the kept ciphers): rebuild its 1-RTT
    ciphers per packet from now on (see the module docstring). Safe on any live connection."""
    if not AVAILABLE or not ON_DEMAND_CIPHERS or quic._is_client:
        return
    cryptos = getattr(quic, "_cryptos", None)
    one_rtt = cryptos.get(tls.Epoch.ONE_RTT) if cryptos else None
    if one_rtt is not None:
        _ciphers_on_demand(one_rtt.recv)
        _ciphers_on_demand(one_rtt.send)


def dismantle(protocol: Any) -> None:
    """Break the reference cycles of a terminated connection, so that reference counting frees it
    at once: aioquic's QuicConnection refers to itself through ~35 bound methods (its frame
    table, loss-recovery and TLS callbacks), so without this only the cyclic garbage collector
    can free it, and the beacon keeps that collector away from its long-lived objects
    (:mod:`beacon.server` freezes them). Call it after the connection's last event was handled;
    the protocol must not be used afterwards (its timers are cancelled here)."""
    for name in ("_timer", "_transmit_task"):
        handle = getattr(protocol, name, None)
        if handle is not None:
            handle.cancel()
            setattr(protocol, name, None)
    quic = getattr(protocol, "_quic", None)
    if quic is not None:
        quic.__dict__.clear()


# --- hostile clients: bounded receive side, anti-amplification, junk Initials ----------------

CONTROL_WINDOW = 16 * 1024  # credit beyond what the beacon consumed (its frames are <= 4 KiB)
MAX_STREAM_GAPS = 16  # out-of-order fragments kept on a stream before the client is dropped
MAX_CRYPTO_PENDING = 16 * 1024  # a ClientHello is ~300 bytes; aioquic allows 512 KiB per epoch


# aioquic logs a WARNING per connection it closes for a transport error: one line per hostile
# client (to stderr where nothing configures logging). The beacon counts those closes itself;
# its connections log to this child of aioquic's "quic" logger, quiet below ERROR unless the
# operator's logging configuration sets a level for it.
TRANSPORT_LOG = logging.getLogger("quic.beacon")
if TRANSPORT_LOG.level == logging.NOTSET:
    TRANSPORT_LOG.setLevel(logging.ERROR)


class BeaconQuicConnection(QuicConnection):
    """A server connection that a stranger cannot make hold memory it did not grant.

    aioquic pads a stream's receive buffer up to the offset of out-of-order data and raises
    MAX_STREAM_DATA / MAX_DATA from the *highest offset received*, whatever was read: with a few
    one-byte STREAM frames at growing offsets a client grew the beacon by hundreds of MB. Here:

    - the client may open exactly one bidirectional stream (the control stream, 0) and no
      unidirectional one: anything else is a STREAM_LIMIT_ERROR that closes the connection;
    - credit slides with what the beacon consumed (every contiguous byte is handed to the frame
      decoder at once, so consumed = the receiver's start offset), at most
      :data:`CONTROL_WINDOW` ahead, per stream and per connection (as ``discretpeer.flow``);
    - out-of-order data is kept in at most :data:`MAX_STREAM_GAPS` fragments, CRYPTO data in at
      most :data:`MAX_CRYPTO_PENDING` bytes per epoch;
    - nothing is sent beyond 3x what an unvalidated address sent (RFC 9000 §8.1): aioquic
      applies that limit except to its CONNECTION_CLOSE, which then is dropped silently.

    The configuration's ``max_data`` / ``max_stream_data`` are the initial windows.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for limit, value in ((self._local_max_streams_bidi, 1), (self._local_max_streams_uni, 0)):
            limit.value = limit.sent = value
        self.amplification_dropped = 0  # bytes not sent to stay within 3x
        self._logger = QuicConnectionAdapter(TRANSPORT_LOG, self._logger.extra)

    def _write_connection_limits(self, builder: Any, space: Any) -> None:
        max_data = self._local_max_data
        buffered = sum(s.receiver.highest_offset - s.receiver.starting_offset() for s in self._streams.values())
        target = max_data.used - buffered + CONTROL_WINDOW
        if target - max_data.value >= CONTROL_WINDOW // 2:
            max_data.value = target
        # the base class doubles the window on arrival; hide the arrival count from it
        used, max_data.used = max_data.used, 0
        try:
            super()._write_connection_limits(builder, space)
        finally:
            max_data.used = used

    def _write_stream_limits(self, builder: Any, space: Any, stream: QuicStream) -> None:
        if stream.max_stream_data_local:
            target = stream.receiver.starting_offset() + CONTROL_WINDOW
            if target - stream.max_stream_data_local >= CONTROL_WINDOW // 2:
                stream.max_stream_data_local = target
        # the base class doubles on arrival: show it a stream that received nothing new
        receiver = stream.receiver
        highest, receiver.highest_offset = receiver.highest_offset, 0
        try:
            super()._write_stream_limits(builder, space, stream)
        finally:
            receiver.highest_offset = highest

    def _handle_stream_frame(self, context: Any, frame_type: int, buf: Buffer) -> None:
        super()._handle_stream_frame(context, frame_type, buf)
        for stream in self._streams.values():
            if len(stream.receiver._ranges) > MAX_STREAM_GAPS:
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
        if offset + length - stream.receiver.starting_offset() > MAX_CRYPTO_PENDING:
            raise QuicConnectionError(
                error_code=QuicErrorCode.CRYPTO_BUFFER_EXCEEDED,
                frame_type=frame_type,
                reason_phrase="too much crypto buffering",
            )
        super()._handle_crypto_frame(context, frame_type, buf)

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


def initial_decrypts(data: bytes, host_cid_length: int) -> bool:
    """Whether ``data`` starts with a client Initial packet that decrypts with the Initial keys
    of its destination connection ID (~20 us). Junk (random bytes with a plausible header) does
    not: the beacon drops it before any state or per-IP budget is spent on it."""
    buf = Buffer(data=data)
    try:
        header = pull_quic_header(buf, host_cid_length=host_cid_length)
        if header.packet_type != QuicPacketType.INITIAL or header.version is None:
            return False
        if header.packet_length > len(data):
            return False
        # the client's Initial keys only (CryptoPair.setup_initial also builds the server's)
        salt = INITIAL_SALT_VERSION_2 if header.version == QuicProtocolVersion.VERSION_2 else INITIAL_SALT_VERSION_1
        algorithm = tls.cipher_suite_hash(INITIAL_CIPHER_SUITE)
        secret = tls.hkdf_expand_label(
            algorithm,
            tls.hkdf_extract(algorithm, salt, header.destination_cid),
            b"client in",
            b"",
            algorithm.digest_size,
        )
        context = CryptoContext()
        context.setup(cipher_suite=INITIAL_CIPHER_SUITE, secret=secret, version=header.version)
        context.decrypt_packet(data[: header.packet_length], buf.tell(), 0)
    except Exception:  # noqa: BLE001 - CryptoError, ValueError, BufferReadError: all junk
        return False
    return True
