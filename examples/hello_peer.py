"""Two copies of this program, anywhere, meet through a beacon and say hello.

usage: python examples/hello_peer.py BEACON_HOST:PORT CERT_HASH "shared secret" [BIND_ADDRESS]
"""

import asyncio
import sys

from discretpeer import Identity, Peer


async def main(beacon: str, cert_hash: str, secret: str, bind: str | None) -> None:
    identity = Identity.generate()  # real apps: Identity.load_or_create("~/.myapp/identity.key")
    beacons = [{"hostname": beacon, "cert_hash": cert_hash}]
    async with Peer(identity, beacons, host=bind) as peer:
        # expect=None: any peer that knows the secret; pass a peer id (or a set) to pin who
        conn = await peer.connect(secret, expect=None, timeout=30)
        print(f"connected to {conn.peer_id} via {conn.path}", flush=True)
        # both sides open a stream and accept the other's
        reader, writer = await conn.open_stream()
        writer.write(f"hello from {peer.peer_id}".encode())
        writer.write_eof()
        their_reader, their_writer = await conn.accept_stream()
        print((await their_reader.read()).decode(), flush=True)
        their_writer.write_eof()
        await reader.read()  # ends when the other side has read our hello and closed


if __name__ == "__main__":
    if len(sys.argv) not in (4, 5):
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)  # the usage line
        sys.exit(2)
    asyncio.run(main(*sys.argv[1:4], sys.argv[4] if len(sys.argv) > 4 else None))
