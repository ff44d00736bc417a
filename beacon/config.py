"""Beacon settings: one frozen dataclass, strict TOML loading, and the commented template.

Every setting is a field of :class:`BeaconConfig`; its metadata carries the comment written to
``Beacon.conf.toml`` on first run and the check applied when loading. So the template, the
example file at the repository root and the validation can never drift apart.

Errors are :class:`ConfigError` with one line naming the file and the key.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from discretpeer.wire import MAX_FRAME

DEFAULT_PORT = 4264


class ConfigError(Exception):
    """A setting that cannot be used. ``str()`` is one line naming the source and the key."""


Check = Callable[[Any], str | None]


def _range(low: float, high: float | None = None) -> Check:
    def check(value: Any) -> str | None:
        if value < low or (high is not None and value > high):
            return f"must be between {low} and {high}" if high is not None else f"must be at least {low}"
        return None

    return check


def _choice(*options: str) -> Check:
    def check(value: Any) -> str | None:
        return None if value in options else "must be one of " + ", ".join(repr(o) for o in options)

    return check


def _ip(version: int) -> Check:
    def check(value: Any) -> str | None:
        try:
            ip = ipaddress.ip_address(value)
        except ValueError:
            return f"must be an IPv{version} address"
        return None if ip.version == version else f"must be an IPv{version} address"

    return check


def _store_url(value: Any) -> str | None:
    if value == "memory" or value.split("://", 1)[0] in ("redis", "rediss", "valkey", "valkeys", "unix"):
        return None
    return 'must be "memory" or a URL redis://host:port/db (rediss:// for TLS, unix:///path.sock)'


def _setting(default: Any, doc: str, check: Check | None = None, group: str | None = None) -> Any:
    return field(default=default, metadata={"doc": doc, "check": check, "group": group})


@dataclass(frozen=True)
class BeaconConfig:
    """All settings, with their defaults. Build one in code with ``BeaconConfig(port=0, ...)``
    or :func:`BeaconConfig.replace`; from a file with :func:`load_config`."""

    # --- network ---
    host: str = _setting("0.0.0.0", "IPv4 address to listen on (0.0.0.0 = every interface).", _ip(4), "Network")
    port: int = _setting(DEFAULT_PORT, "UDP port for QUIC over IPv4 (0 = any free port).", _range(0, 65535))
    ipv6_enabled: bool = _setting(
        True, "Also listen on IPv6. A host without IPv6 logs a warning and keeps serving IPv4."
    )
    ipv6_host: str = _setting("::", "IPv6 address to listen on (:: = every interface).", _ip(6))
    ipv6_port: int = _setting(DEFAULT_PORT, "UDP port for QUIC over IPv6 (0 = any free port).", _range(0, 65535))

    # --- connections ---
    max_connections: int = _setting(
        50000, "Connections served at once; new handshakes beyond are dropped.", _range(1), "Connections and limits"
    )
    max_connections_per_ip: int = _setting(
        64, "Connections from one IPv4 address or IPv6 /64 (more get TOO_MANY_CONNECTIONS).", _range(1)
    )
    handshakes_per_second_per_ip: float = _setting(
        20.0, "New handshakes per second from one IP (token bucket; excess Initials are dropped).", _range(0.001)
    )
    handshake_burst_per_ip: int = _setting(40, "Burst size of that token bucket.", _range(1))
    retry: str = _setting(
        "auto",
        'QUIC address validation (Retry): "auto" = only under load, "always", or "never".',
        _choice("auto", "always", "never"),
    )
    retry_threshold_handshakes_per_second: float = _setting(
        200.0, 'With retry = "auto": global handshake rate above which Retry is required.', _range(0)
    )
    idle_timeout_seconds: float = _setting(
        60.0, "QUIC idle timeout: a connection silent this long is closed (clients send PINGs).", _range(1, 3600)
    )
    hello_timeout_seconds: float = _setting(
        10.0, "A connection that has not sent Hello after this long is closed.", _range(0.1, 600)
    )
    max_tokens_per_connection: int = _setting(
        128, "Tokens one connection may hold (an announce beyond is rejected with TOO_MANY_TOKENS).", _range(1, 65535)
    )
    max_peers_per_token: int = _setting(
        16,
        "Connections that may wait on one token, at most 4 per address (fair share: see beacon/meetings.py); "
        "a peer refused a place is told TOKEN_FULL.",
        _range(2, 100000)
    )
    max_frame_size: int = _setting(
        MAX_FRAME, f"Largest frame accepted, in bytes (at most {MAX_FRAME}).", _range(64, MAX_FRAME)
    )
    frames_per_second_per_connection: float = _setting(
        50.0, "Frames per second one connection may send (token bucket; excess = RATE_LIMITED).", _range(0.001)
    )
    frame_burst_per_connection: int = _setting(200, "Burst size of that token bucket.", _range(1))
    max_unsent_bytes: int = _setting(
        262144, "Bytes queued to a client and not yet acknowledged before it is dropped (SLOW_READER).", _range(1024)
    )

    # --- relay ---
    relay_enabled: bool = _setting(
        True, "Relay encrypted datagrams between two introduced peers that cannot punch through.", None, "Relay"
    )
    relay_max_sessions: int = _setting(1000, "Relay sessions at once (more: RELAY_TOO_MANY_SESSIONS).", _range(0))
    relay_max_sessions_per_connection: int = _setting(16, "Relay sessions one beacon connection may hold.", _range(1))
    relay_max_bytes: int = _setting(
        1073741824, "Bytes one session may forward, both directions together (then RELAY_BYTES_EXCEEDED).",
        _range(1, 2**63 - 1),
    )
    relay_max_seconds: int = _setting(
        86400, "Lifetime of one session in seconds (then RELAY_DURATION_EXCEEDED).", _range(1, 2**32 - 1)
    )
    relay_rate_bytes_per_second: int = _setting(
        1000000, "Bytes per second each peer of a session may send; excess datagrams are dropped.",
        _range(1, 2**32 - 1),
    )
    relay_burst_bytes: int = _setting(262144, "Burst size of that token bucket, in bytes.", _range(1600))
    relay_request_timeout_seconds: float = _setting(
        30.0, "A relay request waits this long for the other peer's request.", _range(0.1, 3600)
    )
    relay_max_pending_requests: int = _setting(10000, "Relay requests waiting at once.", _range(1))
    relay_link_host: str = _setting(
        "127.0.0.1",
        "With a shared store: address of the UDP socket beacons on different machines forward relay "
        "datagrams to each other on (authenticated with the shared key). Set it to an address the other "
        "beacons reach (a private network); 127.0.0.1 serves workers and beacons of one host.",
        _ip(4),
    )

    # --- scale-out ---
    workers: int = _setting(
        1,
        "Worker processes sharing the UDP port (SO_REUSEPORT), under a supervisor that restarts them. "
        "More than 1 needs a shared store (the in-memory table cannot be shared between processes).",
        _range(1, 256),
        "Scale-out (several workers, several machines)",
    )
    store: str = _setting(
        "memory",
        'Where the meeting table lives: "memory" (this process) or "redis://host:port/db" (also rediss:// for '
        "TLS, Valkey speaks the same protocol), shared by every worker and every machine with the same cert_der.bin.",
        _store_url,
    )
    store_password: str = _setting("", "Password for the store (AUTH); empty = none or the one in the URL.")
    store_tls: bool = _setting(False, "Connect to the store with TLS (the same as a rediss:// URL).")
    store_tls_ca_file: str = _setting(
        "", "CA certificate file that signs the store's TLS certificate (empty = the system's CAs)."
    )
    store_ttl_seconds: int = _setting(
        30, "A connection's entry in the store expires this long after its worker last refreshed it (dead workers).",
        _range(2, 3600),
    )
    store_start_degraded: bool = _setting(
        False, "Start even when the store cannot be reached (introduce local peers only, keep retrying); "
        "false = exit with one line naming the URL (exit code 2).",
    )

    # --- metrics ---
    metrics_enabled: bool = _setting(
        False, "Serve Prometheus metrics over HTTP on 127.0.0.1 (path /metrics).", None, "Metrics"
    )
    metrics_port: int = _setting(9464, "TCP port of the metrics endpoint (0 = any free port).", _range(0, 65535))

    # --- logs ---
    log_level: str = _setting(
        "info", 'Log level: "debug", "info", "warning" or "error".', _choice("debug", "info", "warning", "error"),
        "Logs",
    )
    log_file_max_bytes: int = _setting(
        10485760, "Size at which logs/beacon.log is rotated.", _range(4096)
    )
    log_file_count: int = _setting(5, "Rotated log files kept besides the current one.", _range(0, 1000))

    def replace(self, **changes: Any) -> BeaconConfig:
        """A copy with ``changes`` applied and validated (raises :class:`ConfigError`)."""
        return from_mapping({**dataclasses.asdict(self), **changes}, source="settings")


_FIELDS = {f.name: f for f in dataclasses.fields(BeaconConfig)}


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, dict):
        return "table"
    if isinstance(value, list):
        return "array"
    return type(value).__name__


def _coerce(name: str, value: Any, source: str) -> Any:
    f = _FIELDS[name]
    kind = type(f.default)
    got = value
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        got = float(value)
    elif kind is bool and not isinstance(value, bool):
        got = None
    elif kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        got = None
    elif kind is float and not (isinstance(got, float) and math.isfinite(got)):
        got = None
    elif kind is str and not isinstance(value, str):
        got = None
    if got is None:
        expected = "a finite float" if kind is float else _type_name(f.default)
        raise ConfigError(f"{source}: key '{name}': expected {expected}, got {_type_name(value)} {value!r}")
    check = f.metadata.get("check")
    problem = check(got) if check is not None else None
    if problem:
        raise ConfigError(f"{source}: key '{name}': {problem}, got {value!r}")
    return got


def from_mapping(values: Mapping[str, Any], *, source: str = "settings") -> BeaconConfig:
    """Validate ``values`` strictly (unknown key, wrong type, out of range → :class:`ConfigError`)."""
    for name in values:
        if name not in _FIELDS:
            raise ConfigError(f"{source}: unknown key '{name}'")
    return BeaconConfig(**{name: _coerce(name, value, source) for name, value in values.items()})


def load_config(path: Path, overrides: Mapping[str, Any] | None = None) -> BeaconConfig:
    """Read ``path`` (TOML), then apply ``overrides`` (e.g. command-line flags)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"{path}: cannot read ({reason})") from exc
    try:
        values = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from exc
    config = from_mapping(values, source=str(path))
    if overrides:
        config = from_mapping({**dataclasses.asdict(config), **overrides}, source="command line")
    return config


def render_template() -> str:
    """The text of a first-run ``Beacon.conf.toml``: every setting, its default, a comment."""
    lines = [
        "# discretpeer beacon settings.",
        "# Every key is listed with its default. Unknown keys and wrong types stop the beacon.",
        "# Command-line flags (--host, --port, --ipv6-port, ...) override these values.",
    ]
    for f in dataclasses.fields(BeaconConfig):
        group = f.metadata.get("group")
        if group:
            lines += ["", f"# --- {group} ---"]
        lines += ["", f"# {f.metadata['doc']}", tomli_w.dumps({f.name: f.default}).rstrip("\n")]
    return "\n".join(lines) + "\n"


def loopback_config(**changes: Any) -> BeaconConfig:
    """Settings for an in-process beacon in tests: 127.0.0.1, any free port, no IPv6."""
    return BeaconConfig().replace(**{"host": "127.0.0.1", "port": 0, "ipv6_enabled": False, **changes})
