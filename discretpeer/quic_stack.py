"""Which QUIC implementation a connection runs on, and what discretpeer reads of it.

Peer connections run on qh3 (:mod:`discretpeer._qh3`, the default) or, with
``Tuning(quic_stack="aioquic")``, on aioquic; beacon connections always on aioquic. A qh3 connection is a
:class:`NativeQuicConnection` that answers for itself; an aioquic one is read through
:mod:`discretpeer._aioquic`. The functions here pick the right one, so the rest of the code does
not care which stack carries a connection.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from discretpeer import _aioquic
from discretpeer.addresses import Addr

STACKS = ("aioquic", "qh3")


class NativeQuicConnection:
    """A connection whose state machine is not aioquic's (qh3's Rust core): it reports itself."""

    def handshake_complete(self) -> bool:
        raise NotImplementedError

    def is_closing(self) -> bool:
        raise NotImplementedError

    def smoothed_rtt(self) -> float:
        raise NotImplementedError

    def bytes_in_flight(self) -> int:
        raise NotImplementedError

    def datagram_size(self) -> int:
        raise NotImplementedError

    def active_path_address(self) -> Addr:
        raise NotImplementedError

    def unacked_bytes(self, stream_id: int | None) -> int:
        """Bytes written and not yet acknowledged, on one stream (``None``: on all)."""
        raise NotImplementedError

    def congestion_state(self) -> dict[str, Any]:
        raise NotImplementedError

    def hold_events_while(self, hold: Callable[[], bool]) -> None:
        """Receive credit that follows the app's reads: no stream data taken while ``hold()``."""
        raise NotImplementedError

    def release_events(self) -> bool:
        raise NotImplementedError

    def limit_datagram_size(self, limit: Callable[[], int | None]) -> None:
        """Ask ``limit()`` (None: unknown) for the largest datagram once, when the connection starts."""
        raise NotImplementedError


def load_stack(name: str) -> str:
    """``name`` if it names a QUIC stack peer connections can run on, else ValueError; its
    one-time costs are paid now, not in the middle of the first handshake (qh3: ~60 ms of import
    and ~60 ms for its crypto library's first key exchange, which would hold the event loop and
    the datagrams of that meeting)."""
    if name not in STACKS:
        raise ValueError(f"quic_stack must be one of {', '.join(STACKS)}, got {name!r}")
    if name == "qh3":
        try:
            from discretpeer._qh3 import warm_up
        except ImportError as exc:
            raise ValueError("quic_stack='qh3' needs qh3: pip install 'qh3==2.1.0'") from exc
        warm_up()
    return name


def connection_class_for(configuration: Any, default: type) -> type:
    """The connection class for a new connection configured as ``configuration``: qh3's for a
    peer connection whose tuning asks for it, else ``default``."""
    tuning = getattr(configuration, "tuning", None)
    if tuning is not None and tuning.quic_stack == "qh3":
        from discretpeer._qh3 import Qh3Connection

        return Qh3Connection
    return default


def handshake_complete(quic: Any) -> bool:
    if isinstance(quic, NativeQuicConnection):
        return quic.handshake_complete()
    return _aioquic.handshake_complete(quic)


def smoothed_rtt(quic: Any) -> float:
    if isinstance(quic, NativeQuicConnection):
        return quic.smoothed_rtt()
    return _aioquic.smoothed_rtt(quic)


def bytes_in_flight(quic: Any) -> int:
    if isinstance(quic, NativeQuicConnection):
        return quic.bytes_in_flight()
    return _aioquic.bytes_in_flight(quic)


def max_datagram_size(quic: Any) -> int:
    if isinstance(quic, NativeQuicConnection):
        return quic.datagram_size()
    return _aioquic.max_datagram_size(quic)


def active_path_address(quic: Any) -> Addr:
    if isinstance(quic, NativeQuicConnection):
        return quic.active_path_address()
    return _aioquic.active_path_address(quic)


def all_unacked_bytes(quic: Any) -> int:
    if isinstance(quic, NativeQuicConnection):
        return quic.unacked_bytes(None)
    return _aioquic.all_unacked_bytes(quic)


def congestion_state(quic: Any) -> dict[str, Any]:
    if isinstance(quic, NativeQuicConnection):
        return quic.congestion_state()
    return _aioquic.congestion_state(quic)
