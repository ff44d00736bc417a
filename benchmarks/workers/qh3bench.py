"""The other QUIC stack, for the "one stack" decision: qh3 (an aioquic fork with Rust crypto).

Runs with the python of a SCRATCH venv holding qh3 (never the project's): ``--qh3-python`` of
``python -m benchmarks`` or DPB_QH3_PYTHON. Imports nothing of the project but benchmarks.common.

``--role server --mode bulk``: reads every stream to its end, answers ``done <bytes>``.
``--role server --mode idle``: answers the first bytes of each connection with as many bytes as a
beacon Welcome, holds the connections (what ``workers.server --kind bare`` does with aioquic);
the aioquic load clients of the project connect to it. ``stats`` reports its connections.
``--role client``: bulk sender like workers.quicbulk. ``--download``: the client asks the server
for ``size`` bytes instead and times them to their end, so the receiving side is qh3's client
transport (batched reads with UDP GRO) rather than its server's one-datagram-per-read endpoint.
``--dgram N``: ``max_datagram_size`` N on both ends, path-MTU probing off (the library's rows at
Ethernet sizes use the same).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime
import gc
import hashlib
import os
import ssl
import time

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from qh3.asyncio import connect, serve
from qh3.asyncio.protocol import QuicConnectionProtocol
from qh3.quic import events
from qh3.quic.configuration import QuicConfiguration

from benchmarks.common import (
    bulk_client,
    commands_until_stop,
    emit,
    rss_bytes,
    run_loop,
    sink,
    stdin_commands,
    worker_args,
)

BEACON_ALPN = "discretpeer-beacon/1"
BENCH_ALPN = "discretpeer-bench"
WELCOME_SIZE = 14  # len(wire.encode(Welcome(...))) as in workers.server


def certificate_pem() -> tuple[bytes, bytes, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    der = cert.public_bytes(serialization.Encoding.DER)
    fingerprint = base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem, fingerprint


class IdleProtocol(QuicConnectionProtocol):
    count = 0

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]  # a local helper
        super().__init__(*args, **kwargs)
        self._answered = False
        IdleProtocol.count += 1

    def quic_event_received(self, event: events.QuicEvent) -> None:
        if isinstance(event, events.StreamDataReceived):
            if not self._answered:
                self._answered = True
                self._quic.send_stream_data(event.stream_id, b"w" * WELCOME_SIZE)
                self.transmit()
            return
        if isinstance(event, events.ConnectionTerminated):
            IdleProtocol.count -= 1
        super().quic_event_received(event)


CHUNK = 64 * 1024


async def serve_download(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answer ``get <size>`` with that many bytes, then EOF."""
    request = await reader.readline()
    size = int(request.split()[1])
    payload = os.urandom(CHUNK)
    sent = 0
    while sent < size:
        chunk = payload[: min(CHUNK, size - sent)]
        writer.write(chunk)
        sent += len(chunk)
        await asyncio.sleep(0)  # qh3's writers have no drain(): let the loop send
    writer.write_eof()


async def download_client(commands: asyncio.Queue, client: QuicConnectionProtocol) -> None:
    async for command in commands_until_stop(commands):
        if command["cmd"] == "send":
            for _ in range(command.get("repeat", 1)):
                reader, writer = await client.create_stream()
                started = time.perf_counter()
                writer.write(b"get %d\n" % command["size"])
                received = 0
                while chunk := await asyncio.wait_for(reader.read(1 << 20), command["timeout"]):
                    received += len(chunk)
                if received != command["size"]:
                    raise RuntimeError(f"received {received} of {command['size']} bytes")
                emit("sent", bytes=received, seconds=time.perf_counter() - started)
            emit("done")


def configuration(args: argparse.Namespace, **settings: object) -> QuicConfiguration:
    config = QuicConfiguration(**settings)
    if args.dgram:
        config.max_datagram_size = args.dgram
        config.probe_datagram_size = False
        config.max_data = config.max_stream_data = 16 * 1024 * 1024  # as quicbulk: not window-bound
    return config


async def main(args: argparse.Namespace) -> None:
    commands = await stdin_commands()
    if args.role == "server":
        cert, key, fingerprint = certificate_pem()
        idle = args.mode == "idle"
        config = configuration(
            args,
            is_client=False,
            alpn_protocols=[BEACON_ALPN if idle else BENCH_ALPN],
            idle_timeout=600.0 if idle else 60.0,
        )
        config.load_cert_chain(cert, key)
        if idle:
            config.max_data, config.max_stream_data = 256 * 1024, 64 * 1024  # as the bare aioquic server
            server = await serve("127.0.0.1", 0, configuration=config, create_protocol=IdleProtocol)
        else:
            handler = serve_download if args.download else sink
            server = await serve(
                "127.0.0.1",
                0,
                configuration=config,
                stream_handler=lambda r, w: asyncio.ensure_future(handler(r, w)),
            )
        gc.collect()
        emit(
            "ready",
            port=server._transport.get_extra_info("sockname")[1],
            fingerprint=fingerprint,
            pid=os.getpid(),
            rss=rss_bytes(os.getpid()),
        )
        async for command in commands_until_stop(commands):
            if command.get("cmd") == "stats":
                gc.collect()
                emit("stats", rss=rss_bytes(os.getpid()), connections=IdleProtocol.count)
        server.close()
        return
    config = configuration(args, is_client=True, alpn_protocols=[BENCH_ALPN], verify_mode=ssl.CERT_NONE)
    async with connect("127.0.0.1", args.port, configuration=config) as client:
        emit("ready", pid=os.getpid())
        if args.download:
            await download_client(commands, client)
            return
        # qh3's stream writers have no drain(); aioquic's never waits either
        await bulk_client(commands, client, drain=False, yield_each=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--role", choices=["server", "client"], required=True)
    parser.add_argument("--mode", choices=["bulk", "idle"], default="bulk")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--dgram", type=int, default=0, help="max_datagram_size on both ends, no probing")
    parser.add_argument("--download", action="store_true", help="the server sends, the client receives")
    args = worker_args(parser)
    run_loop(lambda: main(args), args.uvloop, args.profile)
