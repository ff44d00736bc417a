"""Memory per idle peer connection, by QUIC stack: ``--pairs N`` handshaken dialer/listener pairs
made with the library's own configurations and connection classes (``peer_quic_configuration``,
``quic_stack.connection_class_for``), both ends in this process, datagrams handed across in memory
(no sockets: what is measured is the connections). RSS before and after (after a GC and
``malloc_trim``), divided by the connections; prints ``ready`` with the figure.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
from typing import Any

from aioquic.buffer import Buffer
from aioquic.quic.packet import pull_quic_header

from benchmarks.common import emit, worker_args
from certs import create_bundle
from discretpeer import Identity
from discretpeer.dialer import peer_quic_configuration
from discretpeer.flow import AppPacedQuicConnection
from discretpeer.quic_stack import connection_class_for, handshake_complete
from discretpeer.tuning import Tuning


def rss() -> int:
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def handshaken_pair(client_config: Any, server_config: Any, index: int) -> tuple[Any, Any]:
    cls = connection_class_for(client_config, AppPacedQuicConnection)
    now = 1.0
    client_addr, server_addr = ("127.0.0.1", 20000 + index), ("127.0.0.1", 40000 + index)
    client = cls(configuration=client_config)
    client.connect(server_addr, now=now)
    first = client.datagrams_to_send(now=now)
    header = pull_quic_header(Buffer(data=first[0][0]), host_cid_length=8)
    server = cls(configuration=server_config, original_destination_connection_id=header.destination_cid)
    for data, _ in first:
        server.receive_datagram(data, client_addr, now=now)
    for _ in range(10):
        for data, _ in server.datagrams_to_send(now=now):
            client.receive_datagram(data, server_addr, now=now)
        for data, _ in client.datagrams_to_send(now=now):
            server.receive_datagram(data, client_addr, now=now)
        while client.next_event() is not None or server.next_event() is not None:
            pass
        now += 0.01
    if not (handshake_complete(client) and handshake_complete(server)):
        raise RuntimeError("the in-memory handshake did not complete")
    return client, server


def main(args: argparse.Namespace) -> None:
    tuning = Tuning(quic_stack=args.stack)
    bundle = create_bundle("discretpeer", private_key=Identity.generate().private_key)
    server_config = peer_quic_configuration(is_client=False, tuning=tuning)
    server_config.certificate, server_config.private_key = bundle.certificate, bundle.private_key
    client_config = peer_quic_configuration(is_client=True, tuning=tuning)
    handshaken_pair(client_config, server_config, 0)  # imports, caches, first allocations
    before = rss()
    pairs = [handshaken_pair(client_config, server_config, index) for index in range(1, args.pairs + 1)]
    after = rss()
    emit(
        "ready",
        pid=os.getpid(),
        stack=args.stack,
        connection_class=type(pairs[0][0]).__name__,
        per_connection_kb=(after - before) / (2 * len(pairs)) / 1024,
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--stack", choices=("qh3", "aioquic"), required=True)
    parser.add_argument("--pairs", type=int, default=300)
    main(worker_args(parser))
