"""Plain aioquic bulk transfer, the throughput baseline: aioquic's own ``serve()``/``connect()``
with default settings (QuicConfiguration defaults, asyncio's default loop), one stream;
``--dgram N`` sets ``max_datagram_size`` on both ends (the same datagram size as the library's row).

``--role server`` prints ``ready`` with its port, reads every stream to its end and answers
``done``. ``--role client`` sends ``--size`` bytes per stream (64 KB writes + drain, like an
application would), ``--repeat`` times on one connection, and reports each transfer.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import ssl

from aioquic.asyncio import connect, serve
from aioquic.quic.configuration import QuicConfiguration

from benchmarks.common import (
    bulk_client,
    emit,
    run_loop,
    sink,
    stdin_commands,
    worker_args,
)
from certs import create_bundle

ALPN = "discretpeer-bench"


async def main(args: argparse.Namespace) -> None:
    commands = await stdin_commands()
    sized = {"max_datagram_size": args.dgram} if args.dgram else {}  # else aioquic's default, 1200
    if args.role == "server":
        bundle = create_bundle()
        config = QuicConfiguration(is_client=False, alpn_protocols=[ALPN], **sized)
        config.certificate, config.private_key = bundle.certificate, bundle.private_key
        server = await serve(
            "127.0.0.1",
            0,
            configuration=config,
            stream_handler=lambda r, w: asyncio.ensure_future(sink(r, w)),
        )
        emit("ready", port=server._transport.get_extra_info("sockname")[1], pid=os.getpid())
        await commands.get()
        server.close()
        return
    config = QuicConfiguration(is_client=True, alpn_protocols=[ALPN], verify_mode=ssl.CERT_NONE, **sized)
    async with connect("127.0.0.1", args.port, configuration=config) as client:
        emit("ready", pid=os.getpid())
        # aioquic's drain() never waits: let the loop send as we go
        await bulk_client(commands, client, yield_each=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--role", choices=["server", "client"], required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--dgram", type=int, default=0, help="max_datagram_size of both ends")
    args = worker_args(parser)
    run_loop(lambda: main(args), args.uvloop, args.profile)
