"""Peer configuration: the beacons to use (pinned by certificate hash), read from code or TOML."""

from __future__ import annotations

import ipaddress
import os
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from certs import InvalidFingerprint, parse_fingerprint
from discretpeer.addresses import Addr


class ConfigError(ValueError):
    """A configuration entry that cannot be used; the message names the entry and the problem."""


@dataclass(frozen=True)
class BeaconSpec:
    """One beacon: ``host:port`` (IPv6 literals in brackets) and its 43-character cert hash."""

    host: str
    port: int
    cert_hash: str
    # TLS/TCP port when it is not the UDP port number (the beacon's default is the same number)
    tcp_port: int | None = None
    # HTTP CONNECT proxy URL for the TCP path: None = from HTTPS_PROXY/NO_PROXY, "none" = never
    proxy: str | None = None

    @property
    def tcp(self) -> int:
        return self.tcp_port if self.tcp_port is not None else self.port

    @property
    def hostname(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def __str__(self) -> str:
        return self.hostname

    @classmethod
    def parse(cls, entry: Any, *, where: str = "beacon") -> BeaconSpec:
        """Accept a BeaconSpec, or a mapping ``{hostname = "host:port", cert_hash = "..."}``
        (optionally ``tcp_port = 443`` when the beacon's TLS/TCP port is not the UDP one)."""
        if isinstance(entry, BeaconSpec):
            return entry
        if not isinstance(entry, Mapping):
            raise ConfigError(f"{where}: expected a table {{hostname = ..., cert_hash = ...}}, got {entry!r}")
        unknown = set(entry) - {"hostname", "cert_hash", "tcp_port"}
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
        hostname = entry.get("hostname")
        cert_hash = entry.get("cert_hash")
        if not isinstance(hostname, str) or not hostname:
            raise ConfigError(f"{where}: 'hostname' must be a string \"host:port\"")
        host, port = split_host_port(hostname, where=f"{where} hostname {hostname!r}")
        if not isinstance(cert_hash, str):
            raise ConfigError(f"{where} ({hostname}): 'cert_hash' must be a string")
        try:
            parse_fingerprint(cert_hash)
        except InvalidFingerprint as exc:
            raise ConfigError(f"{where} ({hostname}): {exc}") from exc
        tcp_port = entry.get("tcp_port")
        if tcp_port is not None and (
            not isinstance(tcp_port, int) or isinstance(tcp_port, bool) or not 0 < tcp_port < 65536
        ):
            raise ConfigError(f"{where} ({hostname}): 'tcp_port' must be a port number 1..65535")
        return cls(host=host, port=port, cert_hash=cert_hash, tcp_port=tcp_port)


def split_host_port(text: str, *, where: str = "address") -> Addr:
    """Split ``host:port`` / ``[v6]:port``; the port is mandatory and 1..65535."""
    text = text.strip()
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or not text[end + 1 :].startswith(":"):
            raise ConfigError(f"{where}: expected [ipv6]:port")
        host, port_text = text[1:end], text[end + 2 :]
        try:
            ipaddress.IPv6Address(host.split("%", 1)[0])
        except ValueError as exc:
            raise ConfigError(f"{where}: {host!r} is not an IPv6 address") from exc
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise ConfigError(f"{where}: missing port (expected host:port)")
        if ":" in host:
            raise ConfigError(f"{where}: IPv6 addresses need brackets: [addr]:port")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(f"{where}: invalid port {port_text!r}")
    return host, int(port_text)


def parse_beacons(entries: Iterable[Any] | None, *, where: str = "beacons") -> list[BeaconSpec]:
    if entries is None:
        return []
    if isinstance(entries, (str, bytes, Mapping)):
        raise ConfigError(f"{where}: expected a list of beacon tables")
    specs = [BeaconSpec.parse(entry, where=f"{where}[{index}]") for index, entry in enumerate(entries)]
    seen: set[Addr] = set()
    for spec in specs:
        if (spec.host, spec.port) in seen:
            raise ConfigError(f"{where}: {spec.hostname} is listed twice")
        seen.add((spec.host, spec.port))
    return specs


def load_beacons_file(path: str | os.PathLike[str]) -> list[BeaconSpec]:
    """Read ``beacons = [{hostname = "...", cert_hash = "..."}, ...]`` from a TOML file."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: invalid TOML ({exc})") from exc
    return parse_beacons(data.get("beacons", []), where=f"{path}: beacons")
