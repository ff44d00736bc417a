"""Userspace link delay for the NAT lab, for kernels without sch_netem.

Run inside the lab's core namespace. iptables sends every forwarded packet to NFQUEUE
``--queue-num N --queue-bypass``; this program binds that queue through raw netlink (no
library needed), and gives each packet back to the kernel (verdict ACCEPT) once
``delay(in interface) + delay(out interface)`` has passed. Each internet link thus has a
one-way delay, and a packet that crosses the core pays for both links it uses.

Packets of one flow share the same (in, out) pair, so the same delay: their order is kept.

Control on stdin, one command a line:
    <ifname> <ms>      delay for packets entering or leaving that interface
    * <ms>             delay for interfaces not named
Prints ``READY`` once the queue is bound, ``OK`` after each command. Exits at EOF on stdin
(the kernel then lets packets through undelayed, thanks to --queue-bypass).

Usage: python delayer.py QUEUE_NUM
"""

from __future__ import annotations

import contextlib
import heapq
import os
import select
import socket
import struct
import sys
import time

NETLINK_NETFILTER = 12
SOL_NETLINK = 270
NETLINK_NO_ENOBUFS = 5
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET = 0
NFQNL_MSG_VERDICT = 1
NFQNL_MSG_CONFIG = 2
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLMSG_ERROR = 0x2
NLMSG_DONE = 0x3
NFQA_PACKET_HDR = 1
NFQA_VERDICT_HDR = 2
NFQA_IFINDEX_INDEV = 5
NFQA_IFINDEX_OUTDEV = 6
NFQA_CFG_CMD = 1
NFQA_CFG_PARAMS = 2
NFQA_CFG_QUEUE_MAXLEN = 3
NFQA_CFG_MASK = 4
NFQA_CFG_FLAGS = 5
NFQA_CFG_F_GSO = 1 << 2
NFQNL_CFG_CMD_BIND = 1
NFQNL_COPY_META = 1
NF_ACCEPT = 1
QUEUE_MAXLEN = 16384


def _attr(kind: int, payload: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(payload), kind) + payload
    return raw + b"\0" * (-len(raw) % 4)


def _message(msg: int, queue: int, attrs: bytes, flags: int, seq: int) -> bytes:
    body = struct.pack("=BBH", socket.AF_UNSPEC, 0, socket.htons(queue)) + attrs
    return struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_QUEUE << 8) | msg, flags, seq, 0) + body


def _parse_attrs(data: bytes, offset: int) -> dict[int, bytes]:
    attrs = {}
    while offset + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, offset)
        if length < 4:
            break
        attrs[kind & 0x3FFF] = data[offset + 4 : offset + length]
        offset += (length + 3) & ~3
    return attrs


class Delayer:
    def __init__(self, queue: int) -> None:
        self.queue = queue
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self.sock.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)  # SO_RCVBUFFORCE
        self.sock.setsockopt(SOL_NETLINK, NETLINK_NO_ENOBUFS, 1)
        self.sock.bind((0, 0))
        self.seq = 0
        self.delays: dict[str, float] = {}
        self.default = 0.0
        self.names: dict[int, str] = {}
        self.pending: list[tuple[float, int, int]] = []  # (release time, order, packet id)
        self.order = 0

    def _config(self, attrs: bytes) -> None:
        self.seq += 1
        self.sock.send(_message(NFQNL_MSG_CONFIG, self.queue, attrs, NLM_F_REQUEST | NLM_F_ACK, self.seq))
        while True:
            data = self.sock.recv(65536)
            length, kind = struct.unpack_from("=IH", data, 0)
            if kind == NLMSG_ERROR:
                (error,) = struct.unpack_from("=i", data, 16)
                if error:
                    raise OSError(-error, os.strerror(-error))
                return

    def bind(self) -> None:
        self._config(_attr(NFQA_CFG_CMD, struct.pack("!BxH", NFQNL_CFG_CMD_BIND, socket.AF_INET)))
        self._config(_attr(NFQA_CFG_PARAMS, struct.pack("!IB", 0, NFQNL_COPY_META)))
        self._config(_attr(NFQA_CFG_QUEUE_MAXLEN, struct.pack("!I", QUEUE_MAXLEN)))
        # Take GSO packets whole: without this flag the kernel cuts a sender's GSO batch into
        # single datagrams before queueing, so the receiver never gets a GRO batch (a real NIC's
        # GRO would give it one) and this program pays per datagram. Older kernels: ignored.
        flags = struct.pack("!I", NFQA_CFG_F_GSO)
        with contextlib.suppress(OSError):
            self._config(_attr(NFQA_CFG_FLAGS, flags) + _attr(NFQA_CFG_MASK, flags))

    def _delay_of(self, ifindex: int | None) -> float:
        if not ifindex:
            return 0.0
        name = self.names.get(ifindex)
        if name is None:
            try:
                name = socket.if_indextoname(ifindex)
            except OSError:
                name = ""
            self.names[ifindex] = name
        return self.delays.get(name, self.default)

    def command(self, line: str) -> None:
        parts = line.split()
        if len(parts) != 2:
            print("ERR", line, flush=True)
            return
        seconds = float(parts[1]) / 1000.0
        if parts[0] == "*":
            self.default = seconds
        else:
            self.delays[parts[0]] = seconds
        print("OK", flush=True)

    def receive(self) -> None:
        now = time.monotonic()
        while True:
            try:
                data = self.sock.recv(1 << 16, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            offset = 0
            while offset + 16 <= len(data):
                length, kind = struct.unpack_from("=IH", data, offset)
                if length < 16:
                    break
                if kind == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET:
                    attrs = _parse_attrs(data[offset : offset + length], 20)
                    (packet_id,) = struct.unpack_from("!I", attrs[NFQA_PACKET_HDR], 0)
                    indev = attrs.get(NFQA_IFINDEX_INDEV)
                    outdev = attrs.get(NFQA_IFINDEX_OUTDEV)
                    delay = self._delay_of(indev and struct.unpack("!I", indev)[0]) + self._delay_of(
                        outdev and struct.unpack("!I", outdev)[0]
                    )
                    self.order += 1
                    heapq.heappush(self.pending, (now + delay, self.order, packet_id))
                offset += (length + 3) & ~3

    def release_due(self) -> float | None:
        """Give back every packet whose time has come; return seconds until the next one."""
        now = time.monotonic()
        batch = []
        while self.pending and self.pending[0][0] <= now:
            _, _, packet_id = heapq.heappop(self.pending)
            self.seq += 1
            attrs = _attr(NFQA_VERDICT_HDR, struct.pack("!II", NF_ACCEPT, packet_id))
            batch.append(_message(NFQNL_MSG_VERDICT, self.queue, attrs, NLM_F_REQUEST, self.seq))
            if len(batch) >= 64:
                self.sock.send(b"".join(batch))
                batch.clear()
        if batch:
            self.sock.send(b"".join(batch))
        if not self.pending:
            return None
        return max(0.0, self.pending[0][0] - now)

    def run(self) -> None:
        self.bind()
        print("READY", flush=True)
        stdin = sys.stdin.fileno()
        os.set_blocking(stdin, False)
        buffered = b""
        while True:
            timeout = self.release_due()
            readable, _, _ = select.select([self.sock, stdin], [], [], timeout)
            if self.sock in readable:
                self.receive()
            if stdin in readable:
                chunk = os.read(stdin, 4096)
                if not chunk:
                    return
                buffered += chunk
                while b"\n" in buffered:
                    line, buffered = buffered.split(b"\n", 1)
                    if line.strip():
                        self.command(line.decode())


if __name__ == "__main__":
    Delayer(int(sys.argv[1]) if len(sys.argv) > 1 else 0).run()
