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
import ssl
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from certs.smallfile import SmallFileError, read_small_file
from discretpeer.proto.wire import MAX_FRAME

DEFAULT_PORT = 4264
MAX_CONFIG_FILE = 1024 * 1024  # the template is ~4 KB; a device or a huge file is refused unread


class ConfigError(Exception):
    """A setting that cannot be used. ``str()`` is one line naming the source and the key."""


Check = Callable[[Any], str | None]


def _range(low: float, high: float | None = None) -> Check:
    def check(value: Any) -> str | None:
        if value < low or (high is not None and value > high):
            return f"must be between {low} and {high}" if high is not None else f"must be at least {low}"
        return None

    return check


def _off_or_range(low: float, high: float) -> Check:
    def check(value: Any) -> str | None:
        return None if value == 0 or low <= value <= high else f"must be 0 (off) or between {low} and {high}"

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


def _ports(value: Any) -> str | None:
    if not all(isinstance(v, int) and not isinstance(v, bool) and 0 < v < 65536 for v in value):
        return "must be a list of TCP ports (1..65535)"
    if len(value) > 16:
        return "must list at most 16 ports"
    return None


def _store_url(value: Any) -> str | None:
    if value == "memory" or _scheme(value) in ("redis", "rediss", "valkey", "valkeys", "unix"):
        return None
    return 'must be "memory" or a URL redis://host:port/db (rediss:// for TLS, unix:///path.sock)'


def _scheme(url: str) -> str:
    return url.split("://", 1)[0].lower() if "://" in url else ""


MAX_PEM_FILE = 4 * 1024 * 1024  # a system CA bundle is ~200 KB


def _pem_file(value: Any) -> str | None:
    """Empty, or a readable regular file (a CA bundle, a certificate, a key: checked together later)."""
    if not value:
        return None
    try:
        read_small_file(Path(value), MAX_PEM_FILE)
    except FileNotFoundError:
        return "no such file"
    except SmallFileError as exc:
        return str(exc).removeprefix(f"{value}: ")
    except OSError as exc:
        return f"cannot read ({exc.strerror or exc})"
    except ValueError:  # a NUL in the name
        return "not a file name"
    return None


def _ca_file(value: Any) -> str | None:
    problem = _pem_file(value)
    if problem or not value:
        return problem
    try:
        text = read_small_file(Path(value), MAX_PEM_FILE).decode("ascii", "replace")
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=text)
    except (OSError, SmallFileError, ValueError):  # ssl.SSLError is an OSError
        return "holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
    return None


def _setting(
    default: Any, doc: str, check: Check | None = None, group: str | None = None, follows: str | None = None
) -> Any:
    """A field; ``follows``: the name of the setting whose value it takes unless set itself."""
    return field(default=default, metadata={"doc": doc, "check": check, "group": group, "follows": follows})


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
    ipv6_port: int = _setting(
        DEFAULT_PORT,
        "UDP port for QUIC over IPv6 (0 = any free port). Unset: the same as port.",
        _range(0, 65535),
        follows="port",
    )
    behaviour_enabled: bool = _setting(
        True,
        "Answer NAT-behaviour requests on a second UDP port (behaviour_port; open it in the firewall too), so"
        " that peers with this beacon alone learn whether their NAT maps per destination (then pairs that"
        " cannot punch go to the relay at once, and hard NATs are punched by birthday probing) and whether it"
        " filters by port (an answer from the main port, only to an address that proved it receives there).",
    )
    behaviour_port: int = _setting(
        0,
        "The second UDP port. 0 = the UDP port + 1 (4265 with the default port); when that port is taken the"
        " beacon serves without it and logs a warning.",
        _range(0, 65535),
    )

    # --- TLS over TCP ---
    tcp_enabled: bool = _setting(
        True,
        "Also serve the beacon over TLS 1.3 on TCP, on the same port numbers as UDP (same certificate, so the "
        "same cert_hash): peers on networks that drop UDP reach it there.",
        None,
        "TLS over TCP (for networks that block UDP)",
    )
    tcp_extra_ports: tuple = _setting(
        (),
        "More TCP ports for TLS, on the same addresses, e.g. [443] (ports below 1024 need root or "
        "CAP_NET_BIND_SERVICE: AmbientCapabilities=CAP_NET_BIND_SERVICE in the service unit).",
        _ports,
    )
    tcp_handshake_timeout_seconds: float = _setting(
        10.0, "A TCP connection that has not completed its TLS handshake after this long is closed.", _range(0.1, 600)
    )
    tcp_max_unsent_relay_bytes: int = _setting(
        65536,
        "Relayed datagrams queued to a TCP client beyond this many unsent bytes are dropped (like a full UDP "
        "path), so a slow TCP leg neither stalls the relay nor bloats its queue.",
        _range(1500),
    )

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
        60.0,
        "Idle timeout (QUIC and TLS/TCP): a connection silent this long is closed (clients send PINGs).",
        _range(1, 3600),
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
        _range(2, 100000),
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
        1073741824,
        "Bytes one session may forward, both directions together (then RELAY_BYTES_EXCEEDED).",
        _range(1, 2**63 - 1),
    )
    relay_max_seconds: int = _setting(
        86400, "Lifetime of one session in seconds (then RELAY_DURATION_EXCEEDED).", _range(1, 2**32 - 1)
    )
    relay_rate_bytes_per_second: int = _setting(
        10000000,
        "Bytes per second each peer of a session may send; excess datagrams are dropped (QUIC then slows\n# "
        "down). 10 MB/s = 80 Mbit/s: a 50 MB copy through the relay takes ~5 s (50 s at 1 MB/s), and\n# "
        "one session alone cannot fill a small VPS's link. relay_total_rate_bytes_per_second caps them all.",
        _range(1, 2**32 - 1),
    )
    relay_burst_bytes: int = _setting(1048576, "Burst size of that token bucket, in bytes.", _range(1600))
    relay_total_rate_bytes_per_second: int = _setting(
        25000000,
        "Bytes per second the relay forwards for all sessions together (0 = no cap); beyond it datagrams\n# "
        "are dropped, whichever session sent them. 25 MB/s = 200 Mbit/s in, and as much out: set it to\n# "
        "what the VPS's link can spare (~80%). relay_max_bytes bounds the traffic of one session.",
        _range(0, 2**40),
    )
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
    store_tls: bool = _setting(
        False,
        "Connect to the store with TLS even with a redis:// URL (a rediss:// URL always uses TLS). The store's "
        "certificate must chain to store_tls_ca_file (or the system's CAs) and name the host of the URL.",
    )
    store_tls_ca_file: str = _setting(
        "",
        "PEM file (absolute path) of the CA that signs the store's TLS certificate (empty = the system's CAs).",
        _ca_file,
    )
    store_tls_cert_file: str = _setting(
        "",
        "PEM client certificate for a store that asks for one (Redis tls-auth-clients yes, its default); empty = none.",
        _pem_file,
    )
    store_tls_key_file: str = _setting("", "PEM private key of store_tls_cert_file (not encrypted).", _pem_file)
    store_ttl_seconds: int = _setting(
        30,
        "A connection's entry in the store expires this long after its worker last refreshed it (dead workers).",
        _range(2, 3600),
    )
    store_start_degraded: bool = _setting(
        False,
        "Start even when the store cannot be reached (introduce local peers only, keep retrying); "
        "false = exit with one line naming the URL (exit code 2).",
    )

    # --- metrics ---
    metrics_enabled: bool = _setting(
        False, "Serve Prometheus metrics over HTTP on 127.0.0.1 (path /metrics).", None, "Metrics"
    )
    metrics_port: int = _setting(9464, "TCP port of the metrics endpoint (0 = any free port).", _range(0, 65535))

    # --- logs ---
    log_level: str = _setting(
        "info",
        'Log level: "debug", "info", "warning" or "error".',
        _choice("debug", "info", "warning", "error"),
        "Logs",
    )
    log_file_max_bytes: int = _setting(10485760, "Size at which logs/beacon.log is rotated.", _range(4096))
    log_file_count: int = _setting(5, "Rotated log files kept besides the current one.", _range(0, 1000))
    summary_interval_seconds: float = _setting(
        60.0,
        "Seconds between two info lines summing up peers, introductions and relay traffic (0 = off).",
        _off_or_range(0.1, 86400),
    )

    # --- browser shell (beacon/web.py, issue 19) ---
    web_enabled: bool = _setting(
        False,
        "Serve the browser-shell page and its WebSocket signalling (/ws): over HTTPS on the beacon's TLS/TCP "
        "ports (with web_certificate), and/or on web_port.",
        None,
        "Browser shell (web page + signalling)",
    )
    web_certificate: str = _setting(
        "",
        "PEM certificate chain of your domain (e.g. Let's Encrypt fullchain.pem). The page is then served over "
        "HTTPS on every TLS/TCP port of the beacon (the UDP port's number, and tcp_extra_ports: add 443 for "
        "https://NAME/) to browsers that ask for one of the certificate's DNS names (TLS SNI); peers keep the "
        "beacon's own certificate on the same ports. Empty = no HTTPS: a reverse proxy terminates TLS and "
        "forwards to web_port.",
    )
    web_private_key: str = _setting("", "PEM private key of that certificate.")
    web_port: int = _setting(
        0,
        "TCP port of a listener of the page's own (0 = none): plain HTTP for a reverse proxy that terminates TLS "
        "when web_certificate is empty (browsers need HTTPS for the page's WebCrypto), else HTTPS.",
        _range(0, 65535),
    )
    web_host: str = _setting("127.0.0.1", "Address of that listener (0.0.0.0 = every interface).")
    web_turn_secret: str = _setting(
        "", "coturn's static-auth-secret (use-auth-secret): time-limited TURN credentials for paired browsers."
    )
    web_turn_urls: str = _setting("", 'Comma-separated TURN URLs, e.g. "turn:turn.example.org:3478?transport=udp".')
    web_stun_urls: str = _setting("", 'Comma-separated STUN URLs, e.g. "stun:beacon.example.org:4264".')
    web_turn_ttl_seconds: int = _setting(3600, "Lifetime of TURN credentials.", _range(60, 86400))

    def replace(self, **changes: Any) -> BeaconConfig:
        """A copy with ``changes`` applied and validated (raises :class:`ConfigError`).

        A following setting (``ipv6_port``) equal to its leader (``port``) moves with it."""
        return from_mapping(_merge(self, changes), source="settings")


_FIELDS = {f.name: f for f in dataclasses.fields(BeaconConfig)}
_FOLLOWERS = {name: f.metadata["follows"] for name, f in _FIELDS.items() if f.metadata.get("follows")}


def _merge(config: BeaconConfig, changes: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` with ``changes``; a follower still equal to its leader follows the leader's change."""
    values = {**dataclasses.asdict(config), **changes}
    for follower, leader in _FOLLOWERS.items():
        if leader in changes and follower not in changes and getattr(config, follower) == getattr(config, leader):
            values[follower] = changes[leader]
    return values


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
    elif (
        kind is bool
        and not isinstance(value, bool)
        or kind is int
        and (isinstance(value, bool) or not isinstance(value, int))
        or kind is float
        and not (isinstance(got, float) and math.isfinite(got))
        or kind is str
        and not isinstance(value, str)
    ):
        got = None
    elif kind is tuple:
        got = tuple(value) if isinstance(value, (list, tuple)) else None
    if got is None:
        expected = "a finite float" if kind is float else "array" if kind is tuple else _type_name(f.default)
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
    values = dict(values)
    for follower, leader in _FOLLOWERS.items():
        if follower not in values and leader in values:
            values[follower] = values[leader]
    config = BeaconConfig(**{name: _coerce(name, value, source) for name, value in values.items()})
    problem = _combination_problem(config)
    if problem:
        raise ConfigError(f"{source}: {problem}")
    _check_store_tls(config, source)
    return config


def _check_store_tls(c: BeaconConfig, source: str) -> None:
    """The store's TLS settings, together (each alone was checked by :func:`_coerce`)."""
    if c.store == "memory":
        return
    tls = c.store_tls or _scheme(c.store) in ("rediss", "valkeys")
    if tls and _scheme(c.store) == "unix":
        raise ConfigError(f"{source}: key 'store_tls': TLS needs a TCP URL (rediss://host:port/db), not unix://")
    for name in ("store_tls_ca_file", "store_tls_cert_file", "store_tls_key_file"):
        if getattr(c, name) and not tls:
            raise ConfigError(
                f"{source}: key '{name}': only used with TLS: make store a rediss:// URL or set store_tls = true"
            )
    if bool(c.store_tls_cert_file) != bool(c.store_tls_key_file):
        given, missing = (
            ("store_tls_cert_file", "store_tls_key_file")
            if c.store_tls_cert_file
            else ("store_tls_key_file", "store_tls_cert_file")
        )
        raise ConfigError(f"{source}: key '{missing}': needed with {given}")
    if c.store_tls_cert_file:
        try:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.load_cert_chain(c.store_tls_cert_file, c.store_tls_key_file, password=lambda: b"")
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            raise ConfigError(
                f"{source}: key 'store_tls_key_file': {c.store_tls_key_file} and {c.store_tls_cert_file} "
                f"are not a certificate and its unencrypted private key ({getattr(exc, 'reason', None) or exc})"
            ) from None


def _combination_problem(c: BeaconConfig) -> str | None:
    """Settings that are each valid but do not work together."""
    if not c.web_enabled:
        return None
    if not c.web_certificate and not c.web_port:
        return (
            "key 'web_enabled': set web_certificate (HTTPS on the beacon's TLS/TCP ports) "
            "or web_port (plain HTTP behind a reverse proxy)"
        )
    if c.web_certificate and not c.tcp_enabled and not c.web_port:
        return "key 'web_certificate': with tcp_enabled = false the page needs web_port"
    if c.workers > 1:
        return "key 'web_enabled': needs workers = 1 (the signalling rooms live in one process)"
    return None


# Earlier templates wrote this line uncommented, so that changing `port` left IPv6 on 4264.
_OLD_TEMPLATE_IPV6_PORT = f"# UDP port for QUIC over IPv6 (0 = any free port).\nipv6_port = {DEFAULT_PORT}\n"


def load_config(path: Path, overrides: Mapping[str, Any] | None = None) -> BeaconConfig:
    """Read ``path`` (TOML), then apply ``overrides`` (e.g. command-line flags)."""
    path = Path(path)
    try:
        text = read_small_file(path, MAX_CONFIG_FILE).decode("utf-8")
    except SmallFileError as exc:
        raise ConfigError(str(exc)) from exc
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"{path}: cannot read ({reason})") from exc
    try:
        values = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from exc
    if _OLD_TEMPLATE_IPV6_PORT in text:
        # written by the template of an earlier version, never chosen by the operator: it follows port
        values.pop("ipv6_port", None)
    config = from_mapping(values, source=str(path))
    if overrides:
        config = from_mapping(_merge(config, overrides), source="command line")
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
        line = tomli_w.dumps({f.name: f.default}).rstrip("\n")
        # a follower is left commented out, so that changing its leader moves both
        lines += ["", f"# {f.metadata['doc']}", f"# {line}" if f.metadata.get("follows") else line]
    return "\n".join(lines) + "\n"


def loopback_config(**changes: Any) -> BeaconConfig:
    """Settings for an in-process beacon in tests: 127.0.0.1, any free port, no IPv6."""
    return BeaconConfig().replace(**{"host": "127.0.0.1", "port": 0, "ipv6_enabled": False, **changes})
