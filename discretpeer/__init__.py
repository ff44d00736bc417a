"""discretpeer: meet peers through QUIC beacons or the LAN, punch through NATs, verify identities.

from discretpeer import Identity, Peer

async with Peer(Identity.load_or_create("id.key"), beacons=[{"hostname": "b.example:4264",
                                                             "cert_hash": "..."}]) as peer:
    conn = await peer.connect("our shared secret", expect=other_peer_id, timeout=10)
    reader, writer = await conn.open_stream()
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    __version__: str
    from discretpeer.auth import AuthError, PeerPolicy
    from discretpeer.beacon_client import BeaconStatus
    from discretpeer.config import BeaconSpec, ConfigError, load_beacons_file, parse_beacons
    from discretpeer.connection import PeerConnection
    from discretpeer.errors import ConnectError
    from discretpeer.identity import Identity, IdentityError, decode_peer_id, normalize_peer_id
    from discretpeer.peer import Peer, PeerStats
    from discretpeer.tokens import MeetingKeys, derive_token, pair_meeting
    from discretpeer.tuning import Tuning

# imported on first use: `discretpeer id`, `status` and `--help` need no QUIC stack (~0.25 s)
_WHERE = {
    "AuthError": "auth",
    "PeerPolicy": "auth",
    "BeaconStatus": "beacon_client",
    "BeaconSpec": "config",
    "ConfigError": "config",
    "load_beacons_file": "config",
    "parse_beacons": "config",
    "PeerConnection": "connection",
    "ConnectError": "errors",
    "Identity": "identity",
    "IdentityError": "identity",
    "decode_peer_id": "identity",
    "normalize_peer_id": "identity",
    "Peer": "peer",
    "PeerStats": "peer",
    "MeetingKeys": "tokens",
    "derive_token": "tokens",
    "pair_meeting": "tokens",
    "Tuning": "tuning",
}


def _version() -> str:
    """The installed distribution's version (``0+unknown`` when run from a tree never installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("discretpeer")
    except PackageNotFoundError:
        return "0+unknown"


def __getattr__(name: str) -> Any:
    if name == "__version__":  # read from the package metadata on first use (pyproject.toml has it)
        globals()[name] = value = _version()
        return value
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'discretpeer' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"discretpeer.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE, "__version__"])


__all__ = [
    "AuthError",
    "BeaconSpec",
    "BeaconStatus",
    "ConfigError",
    "ConnectError",
    "Identity",
    "IdentityError",
    "MeetingKeys",
    "Peer",
    "PeerConnection",
    "PeerPolicy",
    "PeerStats",
    "Tuning",
    "decode_peer_id",
    "derive_token",
    "load_beacons_file",
    "normalize_peer_id",
    "pair_meeting",
    "parse_beacons",
]
