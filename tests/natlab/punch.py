"""Raw UDP hole punching, to check that the NAT lab behaves as DESIGN.md says.

python punch.py rendezvous PORT
    Keeps the observed address of each peer that says ``HELLO <name> <key>``; once two
    names share a key, tells each the other's observed address (``PEER <ip> <port>``), at
    once and again on every later HELLO.

python punch.py peer NAME KEY RDV_IP RDV_PORT [WINDOW_S] [LOCAL_PORT]
    One socket for everything. Says HELLO every 100 ms until introduced, then sends PROBE to
    the introduced address at once and every 50 ms. Any datagram not from the rendezvous is
    kept and answered (ACK) to the address it came from, even before the introduction.
    Prints one JSON line: success (heard from the peer), who it heard from, timings.
"""

from __future__ import annotations

import json
import select
import socket
import sys
import time


def rendezvous(port: int) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", port))
    print(json.dumps({"ready": True, "port": port}), flush=True)
    seen: dict[str, dict[str, tuple[str, int]]] = {}
    while True:
        data, addr = sock.recvfrom(2048)
        parts = data.decode(errors="replace").split()
        if len(parts) != 3 or parts[0] != "HELLO":
            continue
        _, name, key = parts
        group = seen.setdefault(key, {})
        if group.get(name) != addr:
            group[name] = addr
            print(json.dumps({"hello": name, "key": key, "seen": list(addr)}), flush=True)
        if len(group) >= 2:
            for me, my_addr in group.items():
                for other, other_addr in group.items():
                    if other != me:
                        sock.sendto(f"PEER {other_addr[0]} {other_addr[1]}".encode(), my_addr)


def peer(name: str, key: str, rdv_ip: str, rdv_port: int, window: float, local_port: int) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", local_port))
    rdv = (rdv_ip, rdv_port)
    start = time.monotonic()
    target: tuple[str, int] | None = None
    introduced_at = None
    heard: dict[str, int] = {}
    first_heard = None
    next_hello = start
    next_probe = 0.0
    deadline = start + 5.0  # until introduced
    success_until = None
    while True:
        now = time.monotonic()
        if success_until is not None and now >= success_until:
            break
        if now >= deadline:
            break
        if target is None and now >= next_hello:
            sock.sendto(f"HELLO {name} {key}".encode(), rdv)
            next_hello = now + 0.1
        if target is not None and now >= next_probe:
            sock.sendto(f"PROBE {name}".encode(), target)
            next_probe = now + 0.05
        wake = min(t for t in (next_hello if target is None else next_probe, deadline, success_until or deadline))
        readable, _, _ = select.select([sock], [], [], max(0.0, wake - time.monotonic()))
        if not readable:
            continue
        try:
            data, addr = sock.recvfrom(2048)
        except OSError:  # ICMP error from an earlier send
            continue
        text = data.decode(errors="replace")
        if addr == rdv:
            if text.startswith("PEER ") and target is None:
                _, ip, port = text.split()
                target = (ip, int(port))
                introduced_at = time.monotonic()
                next_probe = introduced_at
                deadline = introduced_at + window
            continue
        key_addr = f"{addr[0]}:{addr[1]}"
        heard[key_addr] = heard.get(key_addr, 0) + 1
        if text.startswith("PROBE "):
            sock.sendto(f"ACK {name}".encode(), addr)
        if first_heard is None:
            first_heard = time.monotonic()
            success_until = first_heard + 0.3  # keep probing a little so the other side hears us too
    result = {
        "name": name,
        "success": first_heard is not None,
        "introduced": target is not None,
        "target": list(target) if target else None,
        "heard_from": heard,
        "punch_ms": None
        if first_heard is None or introduced_at is None
        else round((first_heard - introduced_at) * 1000, 1),
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "rendezvous":
        rendezvous(int(sys.argv[2]))
    else:
        peer(
            sys.argv[2],
            sys.argv[3],
            sys.argv[4],
            int(sys.argv[5]),
            float(sys.argv[6]) if len(sys.argv) > 6 else 1.5,
            int(sys.argv[7]) if len(sys.argv) > 7 else 0,
        )
