"""``discretpeer doctor``: what a user checks when nothing connects. One verdict line per check."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from discretpeer.addresses import Addr
from discretpeer.behaviour_probe import (
    FILTER_NO_ANSWER,
    FILTER_OPEN,
    FILTER_PORT_DEPENDENT,
    FilteringResult,
    probe_filtering,
)
from discretpeer.candidates import is_lan_address, local_addresses
from discretpeer.endpoint import BUFFER_FIX, RECEIVE_BUFFER, SEND_BUFFER, buffers_short, enlarge_buffers
from discretpeer.identity import Identity, IdentityError
from discretpeer.peer import Peer
from discretpeer.portmap.client import PortMapStatus
from discretpeer.proto import wire
from discretpeer.tasks import wait_for

from .control import ControlError, query
from .output import Console, ms
from .session import format_address
from .settings import Settings

OK, WARN, FAIL = "OK", "WARN", "FAIL"
MDNS_TIMEOUT = 3.0


@dataclass
class Check:
    verdict: str
    name: str
    message: str
    data: dict[str, Any] = field(default_factory=dict)


class Report:
    def __init__(self, console: Console) -> None:
        self.console = console
        self.checks: list[Check] = []

    def add(self, verdict: str, name: str, message: str, **data: Any) -> None:
        check = Check(verdict, name, message, data)
        self.checks.append(check)
        if not self.console.json and not (self.console.quiet and verdict == OK):
            print(f"{verdict:<4}  {name}: {message}", flush=True)

    @property
    def failed(self) -> bool:
        return any(check.verdict == FAIL for check in self.checks)


async def _wait_for_beacons(peer: Peer, timeout: float) -> None:
    """Until every beacon is connected (with a round trip measured) or failed once, or timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        statuses = peer.beacon_status
        if all((s.state == "connected" and s.rtt is not None) or s.failures > 0 for s in statuses):
            return
        await asyncio.sleep(0.05)


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


@dataclass
class Netcheck:
    """Hairpinning and filtering, checked while the beacons are connected."""

    public: Addr | None = None  # our public address (first beacon reached over UDP)
    beacon: str | None = None  # ... as that beacon saw it
    own: bool = False  # that address is this machine's: no NAT
    hairpin: float | None = None  # seconds until the probe came back; None: it did not
    hairpin_waited: float = 0.0
    filtering: FilteringResult | None = None
    filtering_beacon: str | None = None  # the beacon whose behaviour port answered the check
    beacons_waited: float = 0.0  # until every beacon connected or failed once (or the timeout)


async def _netcheck(peer: Peer, settings: Settings, timeout: float) -> Netcheck:
    """Once the beacons answered: a probe from the peer's socket to its own public address
    (hairpinning) and, where a beacon has a behaviour port, the filtering check from a fresh socket."""
    started = time.monotonic()
    await _wait_for_beacons(peer, timeout)
    found = Netcheck(beacons_waited=time.monotonic() - started)
    udp = [s for s in peer.beacon_status if s.state == "connected" and s.transport == "udp" and s.observed]
    if not udp:
        return found
    first = udp[0]
    assert first.observed is not None
    found.public, found.beacon = first.observed.to_socket(), first.beacon
    found.own = found.public[0] in set(local_addresses(include_loopback=True, ipv6=True))
    second = next((s for s in udp if s.behaviour_port and s.address), None)

    async def hairpin() -> None:
        if found.own or found.public is None:
            return
        started = time.monotonic()
        found.hairpin = await peer.probe_hairpin(found.public)
        found.hairpin_waited = time.monotonic() - started

    async def filtering() -> None:
        if second is None or second.address is None or second.behaviour_port is None:
            return
        found.filtering_beacon = second.beacon
        with contextlib.suppress(OSError):
            found.filtering = await probe_filtering(
                settings.udp_host, (second.address[0], second.behaviour_port), second.address
            )

    await asyncio.gather(hairpin(), filtering())
    return found


async def _check_beacons(report: Report, settings: Settings, identity: Identity, timeout: float) -> None:
    if not settings.beacons:
        report.add(
            FAIL,
            "beacons",
            'none configured: add beacons = [{hostname = "host:port", cert_hash = "..."}] '
            "to the config file, or use --beacon HOST:PORT=CERT_HASH",
        )
        return
    try:
        peer = Peer(identity, settings.beacons, host=settings.udp_host, port=settings.udp_port, lan=False, relay=False)
        await peer.start()
    except OSError as exc:
        report.add(
            FAIL,
            "udp socket",
            f"cannot open a UDP socket on {settings.udp_host or 'any address'}:"
            f"{settings.udp_port}: {exc.strerror or exc}",
        )
        return
    try:
        mapper = peer.port_mapper

        async def first_mapping() -> float | None:  # how long the gateway took to grant or refuse
            if mapper is None:
                return None
            begun = time.monotonic()
            await mapper.wait_first_attempt(min(timeout, 3.0))
            return time.monotonic() - begun

        netcheck, mapper_seconds = await asyncio.gather(_netcheck(peer, settings, timeout), first_mapping())
        waited = netcheck.beacons_waited
        statuses = [dataclasses.replace(status) for status in peer.beacon_status]  # before close() changes them
        mapping_status = dataclasses.replace(mapper.status) if mapper is not None else None
    finally:
        await peer.close()
    _check_port_mapping(report, mapping_status, mapper_seconds)
    _check_ipv6(report, statuses)
    connected = []
    answered = False
    for status in statuses:
        name = f"beacon {status.beacon}"
        if status.state == "connected" and status.transport != "udp":
            connected.append(status)
            report.add(
                WARN,
                name,
                f"reachable over {status.transport} only (TLS), certificate matches the pinned "
                f"hash, round trip {ms(status.rtt)}: UDP to it fails ({status.udp_error or 'no answer'}); "
                "peers will relay through it",
                beacon=status.beacon,
                transport=status.transport,
                rtt_ms=None if status.rtt is None else round(status.rtt * 1000, 2),
            )
        elif status.state == "connected":
            answered = True
            connected.append(status)
            report.add(
                OK,
                name,
                f"reachable over UDP, certificate matches the pinned hash, round trip {ms(status.rtt)}",
                beacon=status.beacon,
                rtt_ms=None if status.rtt is None else round(status.rtt * 1000, 2),
                observed=format_address(status.observed),
            )
        elif status.pin_mismatches:
            answered = True
            report.add(
                FAIL,
                name,
                f"{status.last_error}: wrong cert_hash in the config, or not the beacon you "
                "think (check its certificate_hash.txt)",
                beacon=status.beacon,
                error=status.last_error,
            )
        else:
            error = status.last_error or f"no answer within {timeout:g}s"
            report.add(
                FAIL,
                name,
                f"unreachable ({error}): beacon down, wrong address, or UDP blocked",
                beacon=status.beacon,
                error=error,
            )
    over_udp = [s.connect_ms / 1000 for s in connected if s.transport == "udp" and s.connect_ms is not None]
    if answered:
        fastest = min(over_udp, default=None)
        report.add(
            OK,
            "udp",
            "UDP to the beacons works" + (f" (first beacon connected in {ms(fastest)})" if fastest is not None else ""),
            ms=_rounded(fastest),
        )
    elif connected:
        report.add(
            WARN,
            "udp",
            f"no beacon answered over UDP (gave up after {ms(waited)}; outgoing UDP blocked?) but TLS over TCP works: "
            "peers connect through the beacons' relay",
            ms=_rounded(waited),
        )
    else:
        report.add(
            FAIL,
            "udp",
            f"no beacon answered over UDP (gave up after {ms(waited)}): outgoing UDP may be blocked by a firewall, "
            "or every beacon is down",
            ms=_rounded(waited),
        )
    await _check_paths(report, settings, timeout)
    connected = [s for s in connected if s.transport == "udp"]  # TCP-observed addresses say nothing of UDP
    if not connected:
        return
    observed = {(s.observed.host, s.observed.port) for s in connected if s.observed is not None}
    hosts = sorted({host for host, _ in observed})
    mine = set(local_addresses(include_loopback=True))
    first = connected[0]
    seen_in = None if first.connect_ms is None else first.connect_ms / 1000  # the Welcome carries it
    if len(hosts) > 1:
        slowest = max((s.connect_ms / 1000 for s in connected if s.connect_ms is not None), default=None)
        report.add(
            WARN,
            "public address",
            f"beacons see different public addresses ({', '.join(hosts)}, {ms(slowest)}): "
            "several uplinks or a NAT with several addresses",
            addresses=hosts,
            ms=_rounded(slowest),
        )
    elif hosts and hosts[0] in mine:
        report.add(
            OK,
            "public address",
            f"{format_address(first.observed)} in {ms(seen_in)}: an address of this machine "
            "(no NAT between here and the beacon)",
            address=format_address(first.observed),
            nat=False,
            ms=_rounded(seen_in),
        )
    else:
        report.add(
            OK,
            "public address",
            f"{format_address(first.observed)} (as seen by beacon {first.beacon} in {ms(seen_in)}; "
            "this machine is behind a NAT)",
            address=format_address(first.observed),
            nat=True,
            ms=_rounded(seen_in),
        )
    distinct = {s.address for s in connected if s.address is not None}
    learned = [s for s in connected if s.mapping in (wire.MAPPING_INDEPENDENT, wire.MAPPING_DEPENDENT)]
    if (len(connected) < 2 or len(distinct) < 2) and learned:
        s = learned[0]
        second = f"{s.second_observed[0]}:{s.second_observed[1]}" if s.second_observed else "?"
        if s.mapping == wire.MAPPING_INDEPENDENT:
            report.add(
                OK,
                "nat mapping",
                f"same external address {format_address(s.observed)} towards both ports of "
                f"beacon {s.beacon} (endpoint-independent mapping, {ms((s.behaviour_ms or 0) / 1000)}): hole "
                "punching can work",
                symmetric=False,
                behaviour_ms=round(s.behaviour_ms or 0, 1),
                ms=round(s.behaviour_ms or 0, 1),
            )
        else:
            report.add(
                WARN,
                "nat mapping",
                f"a different external port per destination ({format_address(s.observed)}"
                f" and {second} at beacon {s.beacon}'s two ports, {ms((s.behaviour_ms or 0) / 1000)}): symmetric "
                "NAT; direct connections need a port mapping, IPv6 or a peer with an easy NAT, else the relay is "
                "used at once",
                symmetric=True,
                behaviour_ms=round(s.behaviour_ms or 0, 1),
                ms=round(s.behaviour_ms or 0, 1),
            )
    elif len(connected) < 2 or len(distinct) < 2:
        report.add(
            WARN,
            "nat mapping",
            "cannot tell with a single reachable beacon: configure at least two "
            "beacons (different addresses), or a beacon with a behaviour port, to check that the NAT keeps "
            "one external port per socket",
            ms=None,
        )
    else:
        # the two welcomes, each carrying what that beacon saw, arrived within the slowest
        both = max((s.connect_ms / 1000 for s in connected if s.connect_ms is not None), default=None)
        if len(observed) == 1:
            report.add(
                OK,
                "nat mapping",
                f"same external address {format_address(first.observed)} towards "
                f"{len(connected)} beacons (endpoint-independent mapping, {ms(both)}): hole punching can work",
                symmetric=False,
                ms=_rounded(both),
            )
        else:
            ports = ", ".join(sorted(f"{h}:{p}" for h, p in observed))
            report.add(
                WARN,
                "nat mapping",
                f"a different external port per destination ({ports}, {ms(both)}): symmetric NAT; "
                "direct connections with peers behind NAT may fail and the relay will be used",
                symmetric=True,
                ms=_rounded(both),
            )
    _check_filtering(report, netcheck)
    _check_hairpin(report, netcheck)


def _check_filtering(report: Report, check: Netcheck) -> None:
    result = check.filtering
    if result is None:
        report.add(
            OK,
            "filtering",
            "unknown: no beacon reached over UDP named a behaviour port (an older beacon, or "
            "behaviour_enabled = false in its Beacon.conf.toml) to answer from a port we never sent to",
            filtering=None,
            port_dependent=None,
            ms=None,
        )
    elif result.outcome == FILTER_OPEN:
        report.add(
            OK,
            "filtering",
            f"endpoint-independent (packets from the beacon's other port came in, {ms(result.seconds)}): "
            "the NAT does not check the sender's port, so punching is easy (with one beacon address it cannot "
            "tell whether it checks the sender's address)",
            filtering="endpoint-independent",
            port_dependent=False,
            beacon=check.filtering_beacon,
            ms=_rounded(result.seconds),
            answer_ms=_rounded(result.answer_seconds),
        )
    elif result.outcome == FILTER_PORT_DEPENDENT:
        report.add(
            OK,
            "filtering",
            f"port-dependent (nothing from the beacon's other port came in, {ms(result.seconds)}): only the "
            "addresses and ports we sent to can answer, so both peers must send at once (they do)",
            filtering="port-dependent",
            port_dependent=True,
            beacon=check.filtering_beacon,
            ms=_rounded(result.seconds),
        )
    elif result.outcome == FILTER_NO_ANSWER:
        report.add(
            WARN,
            "filtering",
            f"unknown: the behaviour port of beacon {check.filtering_beacon} did not answer within "
            f"{ms(result.seconds)} (a firewall in front of it, or UDP to that port blocked here)",
            filtering=None,
            port_dependent=None,
            beacon=check.filtering_beacon,
            ms=_rounded(result.seconds),
        )
    else:
        report.add(
            OK,
            "filtering",
            f"unknown: beacon {check.filtering_beacon} answers behaviour requests but not from its other port "
            f"(an older beacon; {ms(result.seconds)})",
            filtering=None,
            port_dependent=None,
            beacon=check.filtering_beacon,
            ms=_rounded(result.seconds),
        )


def _check_hairpin(report: Report, check: Netcheck) -> None:
    public = f"{check.public[0]}:{check.public[1]}" if check.public else "?"
    if check.public is None:
        report.add(
            OK, "hairpinning", "unknown: no beacon reached over UDP told us our public address", hairpin=None, ms=None
        )
    elif check.own:
        report.add(
            OK,
            "hairpinning",
            f"not needed: our public address {public} is this machine's (no NAT)",
            hairpin=None,
            ms=None,
        )
    elif check.hairpin is not None:
        report.add(
            OK,
            "hairpinning",
            f"yes: a probe to our public address {public} came back in {ms(check.hairpin)}: "
            "peers behind this same NAT can reach us there",
            hairpin=True,
            ms=_rounded(check.hairpin),
        )
    else:
        report.add(
            OK,
            "hairpinning",
            f"no: a probe to our public address {public} did not come back within {ms(check.hairpin_waited)}: "
            "peers behind this same NAT connect through their local addresses instead",
            hairpin=False,
            ms=_rounded(check.hairpin_waited),
        )


async def _check_paths(report: Report, settings: Settings, timeout: float) -> None:
    """Per beacon: does UDP work, which TLS/TCP path works (direct, via the proxy), how fast."""
    from discretpeer.beacon_probe import probe_beacon
    from discretpeer.endpoint import Endpoint

    try:
        endpoint = await Endpoint.open(settings.udp_host, 0)
    except OSError:
        return
    try:
        results = await asyncio.gather(*(probe_beacon(spec, endpoint, min(timeout, 5.0)) for spec in settings.beacons))
    finally:
        endpoint.close()
    for spec, paths in zip(settings.beacons, results, strict=True):
        works = [p for p in paths if p.works]
        text = "; ".join(f"{p.name} {ms(p.seconds)}" if p.works else f"{p.name} fails ({p.error})" for p in paths)
        verdict = OK if any(p.name == "udp" for p in works) else WARN if works else FAIL
        report.add(
            verdict,
            f"paths {spec.hostname}",
            text,
            paths={p.name: (round(p.seconds * 1000, 2) if p.works and p.seconds is not None else None) for p in paths},
            errors={p.name: p.error for p in paths if not p.works},
        )


def _check_port_mapping(report: Report, status: PortMapStatus | None, seconds: float | None = None) -> None:
    """``seconds``: how long the first attempt took (granted or not)."""
    if status is None:
        report.add(OK, "port mapping", "not tried (bound to loopback, or port mapping off)", protocol=None, ms=None)
        return
    tried = ", ".join(f"{name}: {result}" for name, result in sorted(status.answers.items())) or "no answer"
    if status.mapping is not None:
        m = status.mapping
        report.add(
            OK,
            "port mapping",
            f"{m.protocol.upper()} mapped {m.external[0]}:{m.external[1]} on gateway "
            f"{status.gateway} for {m.lifetime:g} s (in {ms(status.seconds_to_map)}): peers behind any NAT "
            "can reach us there",
            protocol=m.protocol,
            mapped=f"{m.external[0]}:{m.external[1]}",
            gateway=status.gateway,
            ms=None if status.seconds_to_map is None else round(status.seconds_to_map * 1000, 1),
        )
    else:
        report.add(
            WARN,
            "port mapping",
            f"gateway {status.gateway or 'unknown'} granted no mapping by PCP, NAT-PMP or "
            f"UPnP ({tried}, {ms(seconds)}); fine behind an easy NAT",
            protocol=None,
            ms=_rounded(seconds),
            gateway=status.gateway,
            answers=status.answers,
            ignored=status.ignored,
        )


def _check_ipv6(report: Report, statuses: list[Any]) -> None:
    started = time.monotonic()
    addresses = [a for a in local_addresses(ipv6=True) if ":" in a and not is_lan_address(a)]
    looked = time.monotonic() - started  # the time to list this machine's addresses
    over_ipv6 = [s for s in statuses if s.state == "connected" and s.address and ":" in s.address[0]]
    if over_ipv6:
        fastest = min((s.connect_ms / 1000 for s in over_ipv6 if s.connect_ms is not None), default=None)
        report.add(
            OK,
            "ipv6",
            f"beacon(s) {', '.join(s.beacon for s in over_ipv6)} reached over IPv6 in {ms(fastest)}: direct "
            "IPv6 paths possible",
            addresses=addresses,
            reachable=True,
            ms=_rounded(fastest),
        )
    elif addresses:
        report.add(
            OK,
            "ipv6",
            f"global IPv6 address(es) {', '.join(addresses)} (no beacon reached over IPv6 to confirm; {ms(looked)})",
            addresses=addresses,
            reachable=None,
            ms=_rounded(looked),
        )
    else:
        report.add(
            WARN,
            "ipv6",
            f"no global IPv6 address: only IPv4 paths ({ms(looked)})",
            addresses=[],
            reachable=False,
            ms=_rounded(looked),
        )


async def _check_token_slots(report: Report, settings: Settings) -> None:
    """What the running expose (or ``forward --control``) was told by its beacons: a meeting
    token refused as full (TOKEN_FULL) means the peers cannot meet on that beacon for now."""
    try:
        status = await query(settings.control_path, timeout=1.0)
    except ControlError:
        return  # nothing running here: nothing to say
    beacons = [b for b in status.get("beacons", []) if isinstance(b, dict)]
    refused = [b for b in beacons if b.get("tokens_full")]
    for beacon in refused:
        report.add(
            WARN,
            "token slots",
            f"beacon {beacon.get('beacon')} refused {beacon['tokens_full']} meeting "
            f"token(s) of the running expose as full ({beacon.get('full_refusal')}): too many connections "
            "wait on that meeting there (someone may be squatting it); it is announced again every ~10 s, "
            "and other beacons still work",
            beacon=beacon.get("beacon"),
            tokens_full=beacon["tokens_full"],
            refusal=beacon.get("full_refusal"),
        )
    if beacons and not refused:
        report.add(OK, "token slots", "no beacon refused a meeting token of the running expose as full")


async def _check_mdns(report: Report, settings: Settings) -> None:
    from zeroconf.asyncio import AsyncZeroconf

    verdict_if_broken = FAIL if settings.lan else WARN
    try:
        aiozc = await wait_for(asyncio.to_thread(AsyncZeroconf), MDNS_TIMEOUT)
    except Exception as exc:  # noqa: BLE001 - any failure is the answer
        report.add(
            verdict_if_broken,
            "mdns",
            f"zeroconf cannot start: {type(exc).__name__}: {exc}"
            + ("" if settings.lan else " (LAN discovery is off anyway)"),
        )
        return
    with contextlib.suppress(Exception):
        await wait_for(aiozc.async_close(), MDNS_TIMEOUT)
    state = "on" if settings.lan else "off (enable with --lan or lan = true)"
    report.add(OK, "mdns", f"zeroconf starts (LAN discovery is {state})", lan=settings.lan)


def udp_buffer_verdict(receive: int, send: int) -> tuple[str, str]:
    """The verdict on the UDP socket buffers a peer gets (bytes granted, 0: unknown)."""
    mib = 1024 * 1024
    granted = f"receive {receive / mib:.2f} MiB, send {send / mib:.2f} MiB"
    if not receive or not send:
        return OK, f"{granted} (the system does not tell)"
    if not buffers_short(receive, send):
        return OK, granted
    return WARN, (
        f"{granted} of the {RECEIVE_BUFFER / mib:.0f} and {SEND_BUFFER / mib:.0f} MiB asked: the system caps "
        f"them (net.core.rmem_max, wmem_max), and at high rates bursts are dropped; raise the caps: {BUFFER_FIX}"
    )


def _check_udp_buffers(report: Report) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        receive, send = enlarge_buffers(sock)
    verdict, message = udp_buffer_verdict(receive, send)
    report.add(verdict, "udp buffers", message, receive=receive, send=send, asked=[RECEIVE_BUFFER, SEND_BUFFER])


async def run_doctor(settings: Settings, args: Any, console: Console) -> int:
    report = Report(console)
    if settings.config_path is not None:
        report.add(
            OK,
            "config",
            f"{settings.config_path}: {len(settings.beacons)} beacon(s), {len(settings.allow)} allowed peer(s)",
        )
    else:
        report.add(OK, "config", f"no config file; {len(settings.beacons)} beacon(s) from the environment or flags")
    identity: Identity | None = None
    path = settings.identity_path
    if path.exists():
        try:
            identity = Identity.load(path)
            report.add(OK, "identity", f"{path}: peer id {identity.peer_id}", peer_id=identity.peer_id)
        except IdentityError as exc:
            report.add(FAIL, "identity", str(exc))
    else:
        report.add(WARN, "identity", f"none yet at {path}: `discretpeer id` creates one")
    await _check_beacons(report, settings, identity or Identity.generate(), args.timeout)
    _check_udp_buffers(report)
    await _check_token_slots(report, settings)
    if not args.no_mdns:
        await _check_mdns(report, settings)
    counts = {verdict: sum(1 for c in report.checks if c.verdict == verdict) for verdict in (OK, WARN, FAIL)}
    if console.json:
        json.dump(
            {
                "ok": not report.failed,
                "checks": [
                    {"verdict": c.verdict, "check": c.name, "message": c.message, **c.data} for c in report.checks
                ],
                "counts": counts,
            },
            sys.stdout,
        )
        sys.stdout.write("\n")
    elif not console.quiet or report.failed:
        print(f"doctor: {counts[OK]} OK, {counts[WARN]} WARN, {counts[FAIL]} FAIL", flush=True)
    return 1 if report.failed else 0
