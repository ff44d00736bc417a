"""TCP sink and source for the forwarding benchmarks (blocking sockets: never the bottleneck).

``--role sink``: listens on 127.0.0.1 (port printed in ``ready``); each connection is read to
its end, then answered ``done <bytes>``. ``--role source``: {"cmd": "send", "port": P,
"size": N, "repeat": K} connects to P and sends N bytes (1 MB writes), half-closes, waits for the
answer; time = connect .. answer.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import threading
import time

from benchmarks.common import arm_deadline, emit

BLOCK = 1 << 20


def serve(listener: socket.socket) -> None:
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=drain, args=(conn,), daemon=True).start()


def drain(conn: socket.socket) -> None:
    buffer = bytearray(BLOCK)
    total = 0
    with conn:
        while True:
            n = conn.recv_into(buffer)
            if not n:
                break
            total += n
        conn.sendall(b"done %d" % total)
        conn.shutdown(socket.SHUT_WR)


def send(port: int, size: int, timeout: float) -> float:
    payload = os.urandom(BLOCK)
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sent = 0
        view = memoryview(payload)
        while sent < size:
            n = min(BLOCK, size - sent)
            sock.sendall(view[:n])
            sent += n
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while True:
            data = sock.recv(64)
            if not data:
                break
            answer += data
    elapsed = time.perf_counter() - started
    if answer != b"done %d" % size:
        raise RuntimeError(f"sink answered {answer[:40]!r}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--role", choices=["sink", "source"], required=True)
    parser.add_argument("--deadline", type=float, default=600.0)
    args = parser.parse_args()
    arm_deadline(args.deadline)
    if args.role == "sink":
        listener = socket.create_server(("127.0.0.1", 0))
        threading.Thread(target=serve, args=(listener,), daemon=True).start()
        emit("ready", port=listener.getsockname()[1], pid=os.getpid())
        for line in sys.stdin:
            if '"stop"' in line:
                break
        return
    emit("ready", pid=os.getpid())
    import json

    for line in sys.stdin:
        command = json.loads(line)
        if command.get("cmd") == "stop":
            break
        if command.get("cmd") == "send":
            try:
                for _ in range(command.get("repeat", 1)):
                    elapsed = send(command["port"], command["size"], command.get("timeout", 60))
                    emit("sent", bytes=command["size"], seconds=elapsed)
                emit("done")
            except (OSError, RuntimeError) as exc:
                emit("error", message=f"{type(exc).__name__}: {exc}")
        elif command.get("cmd") == "probe":  # is something listening and forwarding there?
            try:
                elapsed = send(command["port"], 1024, 10)
                emit("probed", ok=True, seconds=elapsed)
            except (OSError, RuntimeError) as exc:
                emit("probed", ok=False, error=str(exc))


if __name__ == "__main__":
    main()
