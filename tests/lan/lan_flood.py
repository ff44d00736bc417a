"""Flood the LAN with mDNS responses for _discretpeer._udp (run inside a lab namespace).

Packets are built with zeroconf's own DNS encoder (DNSOutgoing), not by hand, and sent
unsolicited from port 5353 to 224.0.0.251. Usage: lan_flood.py '<json config>' (see FloodConfig).
Prints one JSON line {"sent_packets": N, "services": M} when done.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import sys
import time

from zeroconf import DNSAddress, DNSOutgoing, DNSPointer, DNSService, DNSText
from zeroconf.const import (
    _CLASS_IN,
    _CLASS_IN_UNIQUE,
    _FLAGS_AA,
    _FLAGS_QR_RESPONSE,
    _TYPE_A,
    _TYPE_PTR,
    _TYPE_SRV,
    _TYPE_TXT,
)

from discretpeer.proto.lan_txt import SERVICE_TYPE, LanTxt, encode_txt

MDNS = ("224.0.0.251", 5353)


def txt_rdata(strings: list[bytes]) -> bytes:
    return b"".join(bytes([len(s)]) + s for s in strings)


def main(config: dict) -> None:
    my_ip = config["ip"]
    replay = bytes.fromhex(config["replay_token"]) if config.get("replay_token") else None
    services: list[tuple[str, bytes | None, list[str]]] = []  # name, TXT rdata (None: PTR only), addresses
    for n in range(config.get("random", 0)):
        tokens = tuple(os.urandom(32) for _ in range(1 + n % 16))
        services.append((f"rnd{n:04d}", encode_txt(LanTxt(os.urandom(16), tokens)), [my_ip]))
    for n in range(config.get("replay", 0)):
        services.append((f"rep{n:04d}", encode_txt(LanTxt(os.urandom(16), (replay,))), [my_ip]))
    for n in range(config.get("garbage", 0)):
        services.append((f"gar{n:04d}", os.urandom(1 + n % 200), [my_ip]))
    for n in range(config.get("oversized", 0)):
        good = encode_txt(LanTxt(os.urandom(16), tuple(os.urandom(32) for _ in range(16))))
        services.append((f"big{n:04d}", good + txt_rdata([b"x=" + b"y" * 200] * 4), [my_ip]))
    for n in range(config.get("ptr_only", 0)):
        services.append((f"ptr{n:04d}", None, []))
    for n in range(config.get("many_addresses", 0)):
        addresses = [str(ipaddress.IPv4Address("10.78.0.1") + i) for i in range(60)]
        addresses += ["127.0.0.1", "224.0.0.1"]  # never to be reported
        rdata = encode_txt(LanTxt(os.urandom(16), (replay or os.urandom(32),)))
        services.append((f"addr{n:04d}", rdata, addresses))

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("0.0.0.0", 5353))
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(my_ip))
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 255)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)

    sent = 0
    per_packet = config.get("per_packet", 6)
    for _ in range(config.get("rounds", 3)):
        for start in range(0, len(services), per_packet):
            out = DNSOutgoing(_FLAGS_QR_RESPONSE | _FLAGS_AA)
            for label, txt, addresses in services[start : start + per_packet]:
                name = f"{label}.{SERVICE_TYPE}"
                server = f"{label}.local."
                out.add_answer_at_time(DNSPointer(SERVICE_TYPE, _TYPE_PTR, _CLASS_IN, 4500, name), 0)
                if txt is None:
                    continue
                out.add_answer_at_time(DNSService(name, _TYPE_SRV, _CLASS_IN_UNIQUE, 120, 0, 0, 40000, server), 0)
                out.add_answer_at_time(DNSText(name, _TYPE_TXT, _CLASS_IN_UNIQUE, 4500, txt), 0)
                for address in addresses:
                    packed = socket.inet_aton(address)
                    out.add_answer_at_time(DNSAddress(server, _TYPE_A, _CLASS_IN, 120, packed), 0)
            for packet in out.packets():
                sock.sendto(packet, MDNS)
                sent += 1
            time.sleep(config.get("pause", 0.002))
        time.sleep(config.get("round_pause", 0.2))
    print(json.dumps({"sent_packets": sent, "services": len(services)}), flush=True)


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
