"""``discretpeer ping PEER``: meet a peer and time round trips over the peer connection (QUIC
PING, answered by the peer's QUIC stack: it works against any running ``expose`` that allows us),
saying which path carries them (direct, lan, relay), like ``tailscale ping``."""

from __future__ import annotations

import asyncio
import statistics
import sys
from typing import Any

from .output import Console, ms, short_id
from .session import PeerLink, Progress, format_address, make_peer, open_identity, require_meeting_place, stop_event
from .settings import Settings

PING_TIMEOUT = 5.0


def peer_name(settings: Settings, peer_id: str) -> str:
    """``laptop (abcd1234efgh...)`` for a peer named in [peers], else the short id."""
    names = [name for name, value in settings.peers.items() if value == peer_id]
    return f"{names[0]} ({short_id(peer_id)})" if names else short_id(peer_id)


async def run_ping(settings: Settings, args: Any, console: Console) -> int:
    target = settings.resolve_peer(args.peer, where="peer")
    require_meeting_place(settings)
    identity = open_identity(settings, console)
    who = peer_name(settings, target)
    async with make_peer(settings, identity) as peer:
        link = PeerLink(peer, target, settings, console)
        progress = Progress(peer, console, settings=settings)
        progress.start()
        try:
            conn = await link.connect_once()
        finally:
            await progress.stop()
        stop = stop_event()
        rtts: list[float] = []
        for number in range(1, args.count + 1):
            if stop.is_set() or conn.closed:
                break
            try:
                rtt = await conn.ping(PING_TIMEOUT)
            except (TimeoutError, ConnectionError) as exc:
                reason = "no answer" if isinstance(exc, TimeoutError) else f"connection lost ({exc})"
                console.warn(f"ping {number}: {reason} within {PING_TIMEOUT:g}s", event="timeout", seq=number)
            else:
                rtts.append(rtt)
                remote = format_address(conn.remote_address)
                line = f"pong from {who} via {conn.path} {remote} in {ms(rtt)}"
                if console.json:
                    console.result(
                        line,
                        event="pong",
                        seq=number,
                        peer=target,
                        path=conn.path,
                        remote=remote,
                        rtt_ms=round(rtt * 1000, 3),
                    )
                elif not console.quiet:
                    print(line, flush=True)
            if number < args.count:
                with_stop = asyncio.ensure_future(stop.wait())
                await asyncio.wait({with_stop}, timeout=args.interval)
                with_stop.cancel()
        await conn.aclose("ping done", timeout=1.0)
    summary = f"{len(rtts)} pong(s) of {args.count} from {who}"
    if rtts:
        summary += f", round trip min/avg/max {ms(min(rtts))} / {ms(statistics.fmean(rtts))} / {ms(max(rtts))}"
    if console.json:
        console.result(
            summary, event="summary", received=len(rtts), sent=args.count, rtt_ms=[round(r * 1000, 3) for r in rtts]
        )
    elif not console.quiet:
        print(summary, file=sys.stdout, flush=True)
    return 0 if rtts else 1
