"""py-libp2p baseline (run by a *scratch* venv's python, never the project's): one stream, the
same transfer as the other bulk workers. ``--transport quic`` (py-libp2p's QUIC, on aioquic;
``--dgram N`` sets its ``max_datagram_size``) or ``tcp`` (TCP + Noise + Yamux, its defaults).

``--role server`` prints ``ready`` with its multiaddr and sinks every stream (answers
``done <bytes>``); ``--role client --addr MA`` takes {"cmd": "send", "size", "repeat", "timeout"}
on stdin and prints ``sent`` per transfer. Standalone: only needs libp2p (trio) and the stdlib.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time

import multiaddr
import trio
from libp2p import new_host
from libp2p.custom_types import TProtocol
from libp2p.network.stream.exceptions import StreamEOF
from libp2p.peer.peerinfo import info_from_p2p_addr

PROTOCOL = TProtocol("/discretpeer-bench/1.0.0")
CHUNK = 64 * 1024


def emit(event: str, **fields: object) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


async def read_some(stream, n: int) -> bytes:
    """b"" at the end of the stream (py-libp2p raises StreamEOF there)."""
    try:
        return await stream.read(n)
    except StreamEOF:
        return b""


async def sink(stream) -> None:
    """The transfer's size comes first (8 bytes): py-libp2p 0.8.1's QUIC stream loses the tail
    of the data when the writer half-closes right after its last write (seen here: 3,999,163 of
    4,000,000 bytes arrived), so the end is not signalled by EOF but by the count."""
    header = b""
    while len(header) < 8:
        data = await read_some(stream, 8 - len(header))
        if not data:
            return
        header += data
    size = int.from_bytes(header, "big")
    total = 0
    while total < size:
        data = await read_some(stream, min(1 << 20, size - total))
        if not data:
            break
        total += len(data)
    await stream.write(b"done %d" % total)


async def send(host, info, size: int) -> float:
    stream = await host.new_stream(info.peer_id, [PROTOCOL])
    payload = os.urandom(CHUNK)
    started = time.perf_counter()
    await stream.write(size.to_bytes(8, "big"))
    sent = 0
    while sent < size:
        chunk = payload[: min(CHUNK, size - sent)]
        await stream.write(chunk)
        sent += len(chunk)
    answer = b""
    while True:
        data = await read_some(stream, 100)
        if not data:
            break
        answer += data
        if answer.startswith(b"done ") and answer.endswith(b"%d" % size):
            break
    elapsed = time.perf_counter() - started
    await stream.close()
    if answer != b"done %d" % size:
        raise RuntimeError(f"receiver answered {answer[:40]!r}")
    return elapsed


def commands() -> trio.MemoryReceiveChannel:
    send_channel, receive_channel = trio.open_memory_channel(16)
    token = trio.lowlevel.current_trio_token()

    def reader() -> None:
        for line in sys.stdin:
            if line.strip():
                trio.from_thread.run(send_channel.send, json.loads(line), trio_token=token)
        trio.from_thread.run(send_channel.send, None, trio_token=token)

    threading.Thread(target=reader, daemon=True).start()
    return receive_channel


async def main(args: argparse.Namespace) -> None:
    options = {}
    if args.transport == "quic":
        from libp2p.transport.quic.config import QUICTransportConfig

        config = QUICTransportConfig()
        if args.dgram:
            config.max_datagram_size = args.dgram
        options = {"enable_quic": True, "quic_transport_opt": config}
        listen = multiaddr.Multiaddr("/ip4/127.0.0.1/udp/0/quic-v1")
    else:
        listen = multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")
    host = new_host(listen_addrs=[listen], **options)
    incoming = commands()
    async with host.run(listen_addrs=[listen]):
        if args.role == "server":
            host.set_stream_handler(PROTOCOL, sink)
            address = next(str(a) for a in host.get_addrs())
            emit("ready", addr=address, pid=os.getpid())
            while (await incoming.receive()) not in (None, {"cmd": "stop"}):
                pass
            return
        info = info_from_p2p_addr(multiaddr.Multiaddr(args.addr))
        await host.connect(info)
        emit("ready", pid=os.getpid())
        while True:
            command = await incoming.receive()
            if command is None or command.get("cmd") == "stop":
                return
            if command["cmd"] == "send":
                for _ in range(command.get("repeat", 1)):
                    with trio.fail_after(command["timeout"]):
                        elapsed = await send(host, info, command["size"])
                    emit("sent", bytes=command["size"], seconds=elapsed)
                emit("done")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--role", choices=["server", "client"], required=True)
    parser.add_argument("--transport", choices=["quic", "tcp"], required=True)
    parser.add_argument("--addr", default="")
    parser.add_argument("--dgram", type=int, default=0)
    parser.add_argument("--deadline", type=float, default=600.0)
    args = parser.parse_args()
    timer = threading.Timer(args.deadline, lambda: os._exit(3))
    timer.daemon = True
    timer.start()
    trio.run(main, args)
