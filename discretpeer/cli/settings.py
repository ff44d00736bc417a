"""CLI settings: the TOML config file, then environment variables, then flags (each overrides).

Config file (default ``~/.config/discretpeer/config.toml``, or ``$XDG_CONFIG_HOME/discretpeer``;
``--config`` / ``DISCRETPEER_CONFIG`` to choose another)::

    beacons = [{hostname = "beacon.example.org:4264", cert_hash = "43 base64url characters"}]
    allow = ["laptop", "<peer id>:80"]  # who may use `discretpeer expose` (":80": only port 80;
                                       # repeat an entry for more ports: "pi:22", "pi:80")
    lan = false                        # also meet peers on the local network (mDNS)
    relay = true                       # relay through a beacon when punching fails
    timeout = 15                       # seconds to find and verify a peer
    identity = "~/.config/discretpeer/identity.key"
    udp_host = "0.0.0.0"               # address/port of the one UDP socket (default: any)
    udp_port = 0
    max_datagram_size = 1472           # cap on QUIC datagrams (1200..16000; default: what
                                       # path-MTU probing finds, up to 16000)
    expose = [22, "192.168.1.20:80"]   # what `discretpeer expose` offers when no port is given
    expose_host = "127.0.0.1"          # host of the exposed ports given as numbers
    control = "~/.config/discretpeer/expose.sock"
    proxy = "http://proxy.example:3128"  # HTTP CONNECT proxy for the beacons' TLS/TCP path
                                       # (default: HTTPS_PROXY / NO_PROXY; "none": never)
    web_url = "wss://beacon.example.org/ws"  # the beacon's browser signalling, for `web serve` and
                                       # `invite --browser` when --url is not given

    [peers]                            # names usable wherever a peer id is expected
    laptop = "<peer id>"

Unknown keys are errors (a typo must not silently weaken the allow list).
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from discretpeer.config import BeaconSpec, ConfigError, parse_beacons, split_host_port
from discretpeer.identity import PEER_ID_LENGTH, Identity, IdentityError, normalize_peer_id
from discretpeer.proxy import ProxySpec
from discretpeer.tuning import DEFAULT_TUNING, Tuning, parse_tuning

DEFAULT_TIMEOUT = 15.0
KNOWN_KEYS = {
    "beacons", "allow", "lan", "relay", "timeout", "identity", "udp_host", "udp_port", "max_datagram_size",
    "expose", "expose_host", "control", "peers", "proxy", "web_url", "tuning",
}  # fmt: skip
ENV_CONFIG = "DISCRETPEER_CONFIG"
ENV_IDENTITY = "DISCRETPEER_IDENTITY"
ENV_BEACONS = "DISCRETPEER_BEACONS"
ENV_ALLOW = "DISCRETPEER_ALLOW"
ENV_LAN = "DISCRETPEER_LAN"
ENV_SECRET = "DISCRETPEER_SECRET"
ENV_CONTROL = "DISCRETPEER_CONTROL"


@dataclass(frozen=True)
class Service:
    """One exposed TCP service: peers ask for ``port``; we connect to ``host:port``."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass
class Settings:
    config_path: Path | None = None  # the file that was read (None: none found)
    config_target: Path = Path()  # the file read, or where it would be (invite/accept write there)
    identity_path: Path = Path()
    beacons: list[BeaconSpec] = field(default_factory=list)
    allow: list[str] = field(default_factory=list)
    lan: bool = False
    relay: bool = True
    direct: bool = True  # False: relay only, never punch
    timeout: float = DEFAULT_TIMEOUT
    udp_host: str | None = None
    udp_port: int = 0
    max_datagram_size: int | None = None  # None: the library's default (probing decides)
    expose: list[str] = field(default_factory=list)
    expose_host: str = "127.0.0.1"
    control_path: Path = Path()
    secret: str | None = None
    proxy: str | None = None  # None: HTTPS_PROXY/NO_PROXY decide; "none": never a proxy
    web_url: str | None = None  # the beacon's browser signalling WebSocket (ws:// or wss://)
    tuning: Tuning = DEFAULT_TUNING  # the config's tuning list, then --tuning NAME=VALUE on top
    peers: dict[str, str] = field(default_factory=dict)
    # allow entries with a port ("laptop:22"): the exposed ports that peer may use; a peer
    # absent from this map may use every exposed port
    allow_ports: dict[str, frozenset[int]] = field(default_factory=dict)

    def ports_for(self, peer_id: str) -> frozenset[int] | None:
        """The exposed ports ``peer_id`` may use (None: all of them)."""
        return self.allow_ports.get(peer_id)

    def resolve_peer(self, text: str, *, where: str = "peer") -> str:
        """A peer id or a name from ``[peers]`` -> the normalised peer id."""
        text = text.strip()
        if text in self.peers:
            return self.peers[text]
        try:
            return normalize_peer_id(text)
        except IdentityError as exc:
            if len(text) == PEER_ID_LENGTH:  # meant as an id: say what is wrong with it
                raise ConfigError(f"{where} {text!r} is not a valid peer id: {exc}") from None
            config = str(self.config_path) if self.config_path else "the config file"
            names = f"the names there: {', '.join(sorted(self.peers))}" if self.peers else "it has no [peers] table"
            raise ConfigError(
                f"{where} {text!r} is neither a name from [peers] in {config} ({names}) nor a peer id "
                f"({PEER_ID_LENGTH} base32 characters, as `discretpeer id` prints them)"
            ) from None

    def services(self, ports: list[str] | None = None, host: str | None = None) -> dict[int, Service]:
        """Parse ``PORT`` / ``HOST:PORT`` specs (flags, else the config's ``expose``)."""
        specs = ports if ports else self.expose
        default_host = host or self.expose_host
        services: dict[int, Service] = {}
        for spec in specs:
            service = parse_service(str(spec), default_host)
            if service.port in services:
                raise ConfigError(f"port {service.port} is exposed twice ({services[service.port]} and {service})")
            services[service.port] = service
        return services


def parse_service(spec: str, default_host: str) -> Service:
    spec = spec.strip()
    if spec.isdigit():
        port = int(spec)
        if not 0 < port < 65536:
            raise ConfigError(f"expose: invalid port {spec!r}")
        return Service(default_host, port)
    if ":" not in spec:
        raise ConfigError(f"expose: {spec!r} is neither a port nor host:port")
    host, port = split_host_port(spec, where=f"expose {spec!r}")
    return Service(host, port)


def config_home(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    base = env.get("XDG_CONFIG_HOME") or str(Path(env.get("HOME") or Path.home()) / ".config")
    return Path(base).expanduser() / "discretpeer"


def default_config_path(env: Mapping[str, str] | None = None) -> Path:
    return config_home(env) / "config.toml"


def parse_beacon_flag(text: str, *, where: str = "--beacon") -> BeaconSpec:
    """``HOST:PORT=CERT_HASH`` (base64url hashes never contain ``=``)."""
    hostname, sep, cert_hash = text.strip().rpartition("=")
    if not sep or not hostname or not cert_hash:
        raise ConfigError(f"{where} {text!r}: expected HOST:PORT=CERT_HASH")
    return BeaconSpec.parse({"hostname": hostname, "cert_hash": cert_hash}, where=f"{where} {text!r}")


def parse_bool(text: str, *, where: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{where}: expected true or false, got {text!r}")


def _split_list(text: str) -> list[str]:
    return [item for item in text.replace(",", " ").split() if item]


def read_config(path: Path, *, required: bool) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if required:
            raise ConfigError(f"{path}: no such config file") from None
        return {}
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML ({exc})") from None
    unknown = set(data) - KNOWN_KEYS
    if unknown:
        known = ", ".join(sorted(KNOWN_KEYS))
        raise ConfigError(f"{path}: unknown key(s) {', '.join(sorted(unknown))} (known: {known})")
    return data


def _expect(data: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    value = data[key]
    kinds = _tuple(kind)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        names = {
            bool: "a boolean",
            int: "an integer",
            float: "a number",
            str: "a string",
            list: "a list",
            dict: "a table",
        }
        expected = " or ".join(names.get(k, f"a {k.__name__}") for k in kinds)
        raise ConfigError(f"{where}: '{key}' must be {expected}, got {value!r}")
    return value


def _tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _expand(text: str, env: Mapping[str, str] | None = None) -> Path:
    """``~`` and ``~/...`` use the HOME of ``env`` (so tests and services can point it anywhere)."""
    env = os.environ if env is None else env
    if (text == "~" or text.startswith("~/")) and env.get("HOME"):
        return Path(env["HOME"]) / text[2:]
    return Path(os.path.expanduser(text))


def load_settings(args: Any, env: Mapping[str, str] | None = None) -> Settings:
    """Merge config file, environment and parsed flags (``args`` attributes may be missing)."""
    env = os.environ if env is None else env

    def flag(name: str) -> Any:
        return getattr(args, name, None)

    settings = Settings()
    explicit = flag("config") or env.get(ENV_CONFIG)
    path = _expand(explicit, env) if explicit else default_config_path(env)
    data = read_config(path, required=bool(explicit))
    settings.config_path = path if data or path.exists() else None
    settings.config_target = path
    where = str(path)

    # --- config file --------------------------------------------------------------------------
    if "peers" in data:
        peers = _expect(data, "peers", dict, where)
        for name, value in peers.items():
            if not isinstance(value, str):
                raise ConfigError(f"{where}: peers.{name} must be a peer id string")
            try:
                settings.peers[name] = normalize_peer_id(value)
            except IdentityError as exc:
                raise ConfigError(f"{where}: peers.{name}: {exc}") from None
    if "beacons" in data:
        settings.beacons = parse_beacons(data["beacons"], where=f"{where}: beacons")
    allow_entries: list[str] = []
    allow_where = where
    if "allow" in data:
        allow = _expect(data, "allow", list, where)
        if not all(isinstance(item, str) for item in allow):
            raise ConfigError(f"{where}: 'allow' must be a list of peer ids or names")
        allow_entries = list(allow)
    for key in ("lan", "relay"):
        if key in data:
            setattr(settings, key, _expect(data, key, bool, where))
    if "timeout" in data:
        settings.timeout = float(_expect(data, "timeout", (int, float), where))
        if not math.isfinite(settings.timeout) or not 0 < settings.timeout < 1e6:
            raise ConfigError(f"{where}: 'timeout' must be a positive number of seconds, got {data['timeout']!r}")
    if "identity" in data:
        settings.identity_path = _expand(_expect(data, "identity", str, where), env)
    if "udp_host" in data:
        settings.udp_host = _expect(data, "udp_host", str, where) or None
    if "max_datagram_size" in data:
        settings.max_datagram_size = _checked_datagram_size(_expect(data, "max_datagram_size", int, where), where)
    if "udp_port" in data:
        settings.udp_port = _expect(data, "udp_port", int, where)
        if not 0 <= settings.udp_port < 65536:
            raise ConfigError(f"{where}: 'udp_port' must be 0..65535, got {settings.udp_port}")
    if "expose" in data:
        expose = _expect(data, "expose", list, where)
        if not all(isinstance(item, (int, str)) and not isinstance(item, bool) for item in expose):
            raise ConfigError(f"{where}: 'expose' must be a list of ports or \"host:port\" strings")
        settings.expose = [str(item) for item in expose]
    if "expose_host" in data:
        settings.expose_host = _expect(data, "expose_host", str, where)
    if settings.expose:  # checked here, so that every command (doctor too) rejects a bad entry
        try:
            settings.services()
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    control = _expand(_expect(data, "control", str, where), env) if "control" in data else None
    if "proxy" in data:
        settings.proxy = _expect(data, "proxy", str, where)
    if "tuning" in data:  # as --tuning: e.g. tuning = ["path=1gbit@80ms"]; the flags apply on top
        entries = _expect(data, "tuning", list, where)
        if not all(isinstance(item, str) for item in entries):
            raise ConfigError(f'{where}: \'tuning\' must be a list of "NAME=VALUE" strings, e.g. ["path=1gbit@80ms"]')
        try:
            settings.tuning = parse_tuning(entries)
        except ValueError as exc:
            raise ConfigError(f"{where}: 'tuning': {exc}") from None
    if "web_url" in data:
        settings.web_url = _expect(data, "web_url", str, where)
        if not settings.web_url.startswith(("ws://", "wss://")):
            raise ConfigError(f"{where}: 'web_url' must start with ws:// or wss:// (got {settings.web_url!r})")

    # --- environment ---------------------------------------------------------------------------
    if env.get(ENV_IDENTITY):
        settings.identity_path = _expand(env[ENV_IDENTITY], env)
    if env.get(ENV_BEACONS):
        settings.beacons = _unique(
            [parse_beacon_flag(item, where=ENV_BEACONS) for item in _split_list(env[ENV_BEACONS])], ENV_BEACONS
        )
    if env.get(ENV_ALLOW):
        allow_entries, allow_where = _split_list(env[ENV_ALLOW]), ENV_ALLOW
    if env.get(ENV_LAN):
        settings.lan = parse_bool(env[ENV_LAN], where=ENV_LAN)
    if env.get(ENV_SECRET):
        settings.secret = env[ENV_SECRET]
    if env.get(ENV_CONTROL):
        control = _expand(env[ENV_CONTROL], env)

    # --- flags ---------------------------------------------------------------------------------
    if flag("identity"):
        settings.identity_path = _expand(flag("identity"), env)
    if flag("beacon"):
        settings.beacons = _unique([parse_beacon_flag(item) for item in flag("beacon")], "--beacon")
    if flag("allow"):
        allow_entries, allow_where = [i for item in flag("allow") for i in _split_list(item)], "--allow"
    if flag("lan") is not None:
        settings.lan = bool(flag("lan"))
    if flag("relay") is not None:
        settings.relay = bool(flag("relay"))
    if flag("relay_only"):
        settings.direct = False
        settings.relay = True
    if flag("timeout") is not None:
        settings.timeout = float(flag("timeout"))
    if flag("udp_host") is not None:
        settings.udp_host = flag("udp_host") or None
    if flag("udp_port") is not None:
        settings.udp_port = int(flag("udp_port"))
    if flag("max_datagram_size") is not None:
        settings.max_datagram_size = _checked_datagram_size(flag("max_datagram_size"), "--max-datagram-size")
    if flag("secret"):
        settings.secret = flag("secret")
    if flag("control"):
        control = _expand(flag("control"), env)
    if flag("proxy") is not None:
        settings.proxy = flag("proxy")
    if flag("tuning"):
        try:
            settings.tuning = parse_tuning(flag("tuning"), base=settings.tuning)
        except ValueError as exc:
            raise ConfigError(f"--tuning: {exc}") from None

    # --- checks and defaults -------------------------------------------------------------------
    if not math.isfinite(settings.timeout) or settings.timeout <= 0:
        raise ConfigError(f"timeout must be a positive number of seconds, got {settings.timeout!r}")
    if not 0 <= settings.udp_port < 65536:
        raise ConfigError(f"udp_port must be 0..65535, got {settings.udp_port}")
    if settings.secret is not None and not settings.secret.strip():
        raise ConfigError("the secret must not be empty")
    if settings.proxy is not None:
        try:
            ProxySpec.parse(settings.proxy) if settings.proxy.strip().lower() not in ("", "none", "direct") else None
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        settings.beacons = [dataclasses.replace(b, proxy=settings.proxy) for b in settings.beacons]
    settings.allow, settings.allow_ports = _resolve_allow(settings, allow_entries, allow_where)
    if settings.identity_path == Path():
        settings.identity_path = config_home(env) / "identity.key"
    settings.control_path = control or config_home(env) / "expose.sock"
    return settings


def _unique(specs: list[BeaconSpec], where: str) -> list[BeaconSpec]:
    return parse_beacons(specs, where=where)


def load_identity(settings: Settings) -> tuple[Identity, bool]:
    """Load (or create, mode 0600) the identity; returns (identity, created)."""
    path = settings.identity_path
    created = not path.exists()
    return Identity.load_or_create(path), created


def _resolve_allow(settings: Settings, entries: list[str], where: str) -> tuple[list[str], dict[str, frozenset[int]]]:
    """``NAME_OR_ID`` or ``NAME_OR_ID:PORT`` entries -> peer ids, and the ports of those limited
    to some (entries of one peer add up; one without a port lifts the limit)."""
    ids: list[str] = []
    limited: dict[str, set[int]] = {}
    unlimited: set[str] = set()
    for entry in entries:
        text, ports = entry.strip(), None
        if ":" in text:
            text, _, spec = text.rpartition(":")
            if not spec.strip().isdigit() or not 0 < int(spec) < 65536:
                raise ConfigError(
                    f"{where}: allow entry {entry!r}: the port after ':' must be 1..65535, "
                    "e.g. 'laptop:22' (one port per entry; repeat the entry for more)"
                )
            ports = {int(spec)}
        peer_id = settings.resolve_peer(text, where=f"{where}: allow entry")
        ids.append(peer_id)
        if ports is None:
            unlimited.add(peer_id)
        else:
            limited.setdefault(peer_id, set()).update(ports)
    return _dedupe(ids), {p: frozenset(ports) for p, ports in limited.items() if p not in unlimited}


def _dedupe(items: Any) -> list[str]:
    seen: dict[str, None] = {}
    for item in items:
        seen.setdefault(item, None)
    return list(seen)


def _checked_datagram_size(value: int, where: str) -> int:
    from discretpeer.path_mtu import check_max_datagram_size

    try:
        return check_max_datagram_size(value)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
