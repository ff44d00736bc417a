"""A peer in its own process: listens on a meeting and echoes every stream (used by the tests).

usage: python echo_peer.py BEACON_HOST:PORT CERT_HASH MEETING EXPECTED_PEER_ID
Prints its own peer id on the first line of stdout, then serves until stdin closes.
"""

import asyncio
import sys

from discretpeer import Identity, Peer


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.write_eof()


async def serve(conn) -> None:
    while True:
        try:
            reader, writer = await conn.accept_stream()
        except ConnectionError:
            return
        asyncio.ensure_future(echo(reader, writer))


async def main() -> None:
    hostname, cert_hash, meeting, expect = sys.argv[1:5]
    identity = Identity.generate()
    async with Peer(identity, [{"hostname": hostname, "cert_hash": cert_hash}], host="127.0.0.1") as peer:
        await peer.listen(meeting, expect=expect)
        print(identity.peer_id, flush=True)

        async def accept_all() -> None:
            async for conn in peer.incoming():
                asyncio.ensure_future(serve(conn))

        task = asyncio.ensure_future(accept_all())
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, sys.stdin.read)  # until the test closes our stdin
        task.cancel()


if __name__ == "__main__":
    import logging

    import structlog

    structlog.configure(
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
    )
    asyncio.run(main())
