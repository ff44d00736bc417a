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

The mechanics use aioquic's internals, so they live in :mod:`discretpeer._aioquic` (the one
module that touches them, with the checklist for an aioquic upgrade); this module is the
beacon's choice of them. :data:`AVAILABLE` checks at import that the main hooks exist and turns
the diet off otherwise. Only server-side connections are trimmed, and only after
``HandshakeCompleted``. :func:`dismantle` (for terminated connections) lets reference counting
free them, see ``BeaconServer.manage_gc``.
"""

from __future__ import annotations

import logging
from typing import Any

from aioquic import tls
from aioquic.buffer import Buffer
from aioquic.quic.crypto import (
    INITIAL_CIPHER_SUITE,
    INITIAL_SALT_VERSION_1,
    INITIAL_SALT_VERSION_2,
    CryptoContext,
)
from aioquic.quic.packet import QuicPacketType, QuicProtocolVersion, pull_quic_header

from discretpeer import _aioquic
from discretpeer._aioquic import (
    derive_reset_tokens,
    dismantle,
    lighten_protocol,
    prepare_server_connection,
    trim_after_handshake,
)
from discretpeer._aioquic import share_frame_tables as install

__all__ = [
    "AVAILABLE",
    "CONTROL_WINDOW",
    "MAX_CONNECTION_IDS",
    "BeaconQuicConnection",
    "derive_reset_tokens",
    "dismantle",
    "initial_decrypts",
    "install",
    "lighten_protocol",
    "prepare_server_connection",
    "release_ciphers",
    "trim_after_handshake",
]

ON_DEMAND_CIPHERS = True  # rebuild 1-RTT ciphers per packet instead of keeping them
MAX_CONNECTION_IDS = _aioquic.CONNECTION_ID_LIMIT  # RFC 9000 18.2: active_connection_id_limit default and minimum
AVAILABLE = _aioquic.DIET_AVAILABLE


def release_ciphers(quic: Any) -> None:
    """Once a connection has settled (the beacon calls this a few seconds after the handshake,
    so that the registration's own packets still use the kept ciphers): rebuild its 1-RTT
    ciphers per packet from now on (see the module docstring). Safe on any live connection."""
    if ON_DEMAND_CIPHERS:
        _aioquic.release_ciphers(quic)


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


class BeaconQuicConnection(_aioquic.SlidingCredit, _aioquic.BoundedReassembly, _aioquic.AmplificationLimit):
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

    stream_window = CONTROL_WINDOW
    connection_window = CONTROL_WINDOW
    max_stream_gaps = MAX_STREAM_GAPS
    max_crypto_pending = MAX_CRYPTO_PENDING

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _aioquic.limit_peer_streams(self, bidirectional=1, unidirectional=0)
        _aioquic.log_to(self, TRANSPORT_LOG)

    def unread(self, stream_id: int | None) -> int:
        """Received and not yet consumed: every contiguous byte goes to the frame decoder at once."""
        return self.received_unconsumed(stream_id)


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
