"""Which ways to a beacon work, and how fast: QUIC over UDP, TLS over TCP direct, TLS over TCP
through the HTTP proxy (for ``discretpeer doctor``). Each probe is a full Hello/Welcome."""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass

from discretpeer.beacon_client import BeaconClient
from discretpeer.beacon_tcp import open_channel
from discretpeer.config import BeaconSpec
from discretpeer.endpoint import Endpoint
from discretpeer.proto.wire import INSTANCE_SIZE, PROTOCOL_VERSION, Error, Hello, Welcome
from discretpeer.proxy import ProxySpec, proxy_for
from discretpeer.tasks import wait_for


@dataclass
class PathResult:
    name: str  # "udp", "tcp", "tcp via proxy HOST:PORT"
    seconds: float | None = None  # Hello → Welcome done, connection set-up included
    error: str | None = None

    @property
    def works(self) -> bool:
        return self.seconds is not None


async def probe_udp(spec: BeaconSpec, endpoint: Endpoint, timeout: float) -> PathResult:
    client = BeaconClient(
        spec, endpoint, os.urandom(INSTANCE_SIZE), on_introduction=lambda *_: None, get_candidates=list
    )
    started = time.monotonic()
    try:
        link = await wait_for(client.dialer.open_udp(await client.dialer.resolve()), timeout)
    except Exception as exc:  # noqa: BLE001 - the failure is the answer
        return PathResult("udp", error=_text(exc, timeout))
    elapsed = time.monotonic() - started
    link.close("probe done")
    return PathResult("udp", elapsed)


async def probe_tcp(spec: BeaconSpec, proxy: ProxySpec | None, timeout: float) -> PathResult:
    name = f"tcp via {proxy}" if proxy is not None else "tcp"
    started = time.monotonic()
    try:
        channel = await open_channel(spec.host, spec.tcp, spec.cert_hash, proxy=proxy, timeout=timeout)
    except Exception as exc:  # noqa: BLE001 - any failure is reported as the probe result
        return PathResult(name, error=_text(exc, timeout))
    try:
        channel.send(Hello(version=PROTOCOL_VERSION, instance=os.urandom(INSTANCE_SIZE)))
        while True:
            items = await wait_for(channel.receive(), max(0.1, timeout - (time.monotonic() - started)))
            for item in items:
                if isinstance(item, Welcome):
                    return PathResult(name, time.monotonic() - started)
                if isinstance(item, Error):
                    return PathResult(name, error=f"beacon refused: {item.message}")
    except Exception as exc:  # noqa: BLE001 - any failure is reported as the probe result
        return PathResult(name, error=_text(exc, timeout))
    finally:
        channel.close()


async def probe_beacon(spec: BeaconSpec, endpoint: Endpoint, timeout: float) -> list[PathResult]:
    """UDP, TCP direct and (when a proxy applies to this beacon) TCP through it, in parallel."""
    probes = [probe_udp(spec, endpoint, timeout), probe_tcp(spec, None, timeout)]
    try:
        proxy = proxy_for(spec.host, spec.proxy)
    except ValueError as exc:
        return [*await asyncio.gather(*probes), PathResult("tcp via proxy", error=str(exc))]
    if proxy is not None:
        probes.append(probe_tcp(spec, proxy, timeout))
    return list(await asyncio.gather(*probes))


def _text(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return f"no answer within {timeout:g} s"
    return str(exc) or type(exc).__name__
