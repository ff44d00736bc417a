"""A sender whose socket buffer fills (its interface's queue is full, as on a slow link or NIC)
keeps its datagrams in order: once the kernel refused a GSO batch and the transport queued it,
later batches queue behind it instead of overtaking it through the socket. Overtaken datagrams
look lost to QUIC (three later ones acknowledged), and a loss costs the congestion window.

Two public hosts of the lab; the sender's uplink is a 20 Mbit/s token bucket with a deep queue
(nothing is dropped there) and its socket buffer is small, so the kernel says "full" often."""

from __future__ import annotations

import json

import pytest

from tests.natlab.lab import Lab

pytestmark = pytest.mark.natlab

COUNT = 3000  # datagrams of 1200 bytes, in runs of 20: ~1.4 s at 20 Mbit/s

SENDER = """
import asyncio, json, socket, sys
from discretpeer.endpoint import Endpoint
from discretpeer.tuning import Tuning

async def main(host, port, count):
    endpoint = await Endpoint.open("0.0.0.0", 0, tuning=Tuning(gso=True))
    endpoint.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
    queued_at_most = 0
    for start in range(0, count, 20):
        # the first byte 0: not QUIC, the receiver takes them as they are
        run = [b"\\0" + n.to_bytes(4, "big") + bytes(1195) for n in range(start, start + 20)]
        endpoint.send_many([(datagram, (host, port)) for datagram in run])
        queued_at_most = max(queued_at_most, endpoint._transport.get_write_buffer_size())
        await asyncio.sleep(0.0005 if start % 200 else 0)
    while endpoint._transport.get_write_buffer_size():
        await asyncio.sleep(0.01)
    facts = {"gso": endpoint.gso, "gso_sends": endpoint.gso_sends, "queued_at_most": queued_at_most}
    print(json.dumps(facts), flush=True)
    await asyncio.sleep(0.5)
    endpoint.close()

asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
"""

RECEIVER = """
import json, socket, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
sock.bind(("0.0.0.0", int(sys.argv[1])))
print("ready", flush=True)
sock.settimeout(5.0)
order = []
try:
    while len(order) < int(sys.argv[2]):
        data = sock.recv(2048)
        order.append(int.from_bytes(data[1:5], "big"))
except socket.timeout:
    pass
overtaken = sum(1 for a, b in zip(order, order[1:]) if b < a)
print(json.dumps({"received": len(order), "overtaken": overtaken}), flush=True)
"""


def test_batches_queue_behind_what_the_kernel_refused(lab: Lab) -> None:
    lab.add_public("sender", "203.0.113.21")
    lab.add_public("receiver", "203.0.113.22")
    lab.run("sender", ["tc", "qdisc", "replace", "dev", "eth0", "root", "tbf", "rate", "20mbit", "burst", "32kb",
                       "limit", "16mb"])  # fmt: skip
    receiver = lab.python("receiver", RECEIVER, "5000", str(COUNT))
    receiver.wait_for(r"^ready", timeout=10)
    sender = lab.python("sender", SENDER, lab.address("receiver"), "5000", str(COUNT))
    assert sender.wait(30) == 0, sender.stderr[-2000:]
    assert receiver.wait(30) == 0, receiver.stderr[-2000:]
    sent = json.loads(sender.stdout.strip().splitlines()[-1])
    got = json.loads(receiver.stdout.strip().splitlines()[-1])
    assert sent["queued_at_most"] > 0, sent  # the kernel did say "full": the case under test
    assert sent["gso"] and sent["gso_sends"] > 0, sent
    assert got == {"received": COUNT, "overtaken": 0}, (got, sent)
