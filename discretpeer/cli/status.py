"""``discretpeer status``: a live view of the running ``expose`` or of a ``forward --control``
(through its control socket)."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

from .control import ControlError, query
from .output import Console, human_bytes, short_id
from .settings import Settings


def _age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _beacon_lines(status: dict[str, Any]) -> list[str]:
    lines = []
    for beacon in status.get("beacons", []):
        line = f"beacon {beacon['beacon']}: {beacon['state']}"
        if beacon.get("transport") and beacon["state"] == "connected":
            line += f" over {beacon['transport']}"
        if beacon.get("observed"):
            line += f", public address {beacon['observed']}"
        if beacon.get("rtt_ms") is not None:
            line += f", rtt {beacon['rtt_ms']:.1f} ms"
        if beacon.get("last_error") and beacon["state"] != "connected":
            line += f" ({beacon['last_error']})"
        lines.append(line)
    return lines


def _tunnels_line(totals: dict[str, Any], trouble: str, traffic: str) -> str:
    return (
        f"tunnels: {totals.get('tunnels_open', 0)} open, {totals.get('tunnels_total', 0)} total, "
        f"{totals.get(trouble, 0)} {trouble}; {traffic}"
    )


def _who(peer_id: str, names: dict[str, str]) -> str:
    """The name the [peers] table of our config gives this peer id, else its short form."""
    return names.get(peer_id) or short_id(peer_id)


def name_peers(status: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    """Add ``name`` (from our [peers]) next to each peer id of a status snapshot (for --json)."""
    for key in ("connections", "recently_closed"):
        for conn in status.get(key, []):
            if conn.get("peer") in names:
                conn["name"] = names[conn["peer"]]
    if status.get("to") in names:
        status["to_name"] = names[status["to"]]
    if status.get("allowed"):
        status["allowed_names"] = {p: names[p] for p in status["allowed"] if p in names}
    return status


def render_forward(status: dict[str, Any], names: dict[str, str] | None = None) -> str:
    names = names or {}
    port = status.get("remote_port") or "its exposed port"
    lines = [
        f"forward (pid {status.get('pid')}) up {_age(status.get('uptime', 0))}, peer id {status.get('peer_id')}",
        f"forwarding {status.get('listening')} to {_who(status.get('to', ''), names)} port {port}",
        *_beacon_lines(status),
    ]
    conn = status.get("connection")
    if conn:
        rtt = "?" if conn.get("rtt_ms") is None else f"{conn['rtt_ms']:.1f} ms"
        lines.append(
            f"connection: path {conn['path']} ({conn['remote']}), rtt {rtt}; "
            f"connected {status.get('connects', 0)} time(s)"
        )
    else:
        lines.append(f"connection: none right now (connected {status.get('connects', 0)} time(s))")
    totals = status.get("totals", {})
    lines.append(
        _tunnels_line(
            totals,
            "failed",
            f"to the peer {human_bytes(totals.get('bytes_to_peer', 0))}, "
            f"from it {human_bytes(totals.get('bytes_from_peer', 0))}",
        )
    )
    return "\n".join(lines)


def render(status: dict[str, Any], names: dict[str, str] | None = None) -> str:
    """The human view; ``names``: peer id -> name from the [peers] table of our config."""
    names = names or {}
    if status.get("kind") == "forward":
        return render_forward(status, names)
    allowed = status.get("allowed", [])
    lines = [
        f"expose (pid {status.get('pid')}) up {_age(status.get('uptime', 0))}, peer id {status.get('peer_id')}",
        "exposing: " + (", ".join(f"{e['port']} -> {e['target']}" for e in status.get("exposed", [])) or "nothing"),
        f"allowed: {len(allowed)} peer(s) ({', '.join(_who(p, names) for p in allowed[:6])}"
        f"{', ...' if len(allowed) > 6 else ''}), "
        f"meeting from {status.get('meeting')}",
    ]
    lines += _beacon_lines(status)
    connections = status.get("connections", [])
    lines.append(f"connections: {len(connections)}")
    if connections:
        lines.append(
            f"  {'PEER':<16} {'PATH':<7} {'REMOTE':<22} {'RTT':>9} {'TUNNELS':>8} {'IN':>10} {'OUT':>10}  SINCE"
        )
        now = time.time()
        for c in connections:
            rtt = "?" if c.get("rtt_ms") is None else f"{c['rtt_ms']:.1f} ms"
            lines.append(
                f"  {_who(c['peer'], names):<16} {c['path']:<7} {c['remote']:<22} {rtt:>9} "
                f"{str(c['tunnels_open']) + '/' + str(c['tunnels_total']):>8} {human_bytes(c['bytes_from_peer']):>10} "
                f"{human_bytes(c['bytes_to_peer']):>10}  {_age(now - c['since'])} ago"
            )
    totals = status.get("totals", {})
    lines.append(
        _tunnels_line(
            totals,
            "refused",
            f"from peers {human_bytes(totals.get('bytes_from_peers', 0))}, "
            f"to peers {human_bytes(totals.get('bytes_to_peers', 0))}",
        )
    )
    return "\n".join(lines)


async def run_status(settings: Settings, args: Any, console: Console) -> int:
    path = settings.control_path
    tty = sys.stdout.isatty()
    names = {peer_id: name for name, peer_id in settings.peers.items()}
    while True:
        try:
            status = await query(path)
        except ControlError as exc:
            console.error(str(exc))
            return 1
        if console.json:
            sys.stdout.write(json.dumps(name_peers(status, names), default=str) + "\n")
        else:
            text = render(status, names)
            if args.watch and tty:
                sys.stdout.write("\x1b[H\x1b[2J")
            sys.stdout.write(text + "\n" + ("\n" if args.watch and not tty else ""))
        sys.stdout.flush()
        if not args.watch:
            return 0
        await asyncio.sleep(args.interval)
