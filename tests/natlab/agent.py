"""A scriptable UDP host for the NAT lab: plain sockets, driven by JSON lines on stdin.

Run inside a lab namespace (``lab.agent(host)`` starts it and gives a client). Each command is
one JSON object a line; each answer is one JSON object a line on stdout.

    {"op": "open", "port": 0, "echo": false, "rcvbuf": 0}  -> {"sock": 1, "port": 40123}
    {"op": "send", "sock": 1, "to": ["203.0.113.10", 5000], "data": "hi"}   -> {"ok": true}
    {"op": "recv", "sock": 1, "timeout": 1.0}          -> {"data": "...", "from": [ip, port]}
                                                          or {"timeout": true}
    {"op": "drain", "sock": 1, "wait": 0.2}            -> {"packets": [{"data":..., "from":...}]}
    {"op": "whoami", "sock": 1, "to": [ip, port], "timeout": 1.0}
                                                       -> {"seen": [ip, port]} or {"timeout": true}
    {"op": "rtt", "sock": 1, "to": [ip, port], "count": 5, "interval": 0.02, "timeout": 1.0}
                                                       -> {"rtts": [seconds, ...], "lost": 0}

An echo socket answers every datagram to its source with ``SEEN <ip> <port>|<payload>``, so the
sender learns the address its NAT gave it, and keeps a copy for ``recv``/``drain``.
"""

from __future__ import annotations

import contextlib
import json
import queue
import socket
import sys
import threading
import time

ECHO_PREFIX = "SEEN "


class Agent:
    def __init__(self) -> None:
        self.sockets: dict[int, socket.socket] = {}
        self.queues: dict[int, queue.Queue[tuple[str, tuple[str, int], float]]] = {}
        self.next_id = 1

    def _reader(self, sid: int, sock: socket.socket, echo: bool) -> None:
        q = self.queues[sid]
        while True:
            try:
                data, addr = sock.recvfrom(65535)
            except OSError:
                return
            text = data.decode("utf-8", "replace")
            if echo:
                reply = f"{ECHO_PREFIX}{addr[0]} {addr[1]}|{text}".encode()
                with contextlib.suppress(OSError):
                    sock.sendto(reply, addr)
            q.put((text, addr, time.monotonic()))

    def op_open(self, port: int = 0, echo: bool = False, host: str = "0.0.0.0", rcvbuf: int = 0) -> dict:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        if rcvbuf:
            try:
                sock.setsockopt(socket.SOL_SOCKET, 33, rcvbuf)  # SO_RCVBUFFORCE (root)
            except OSError:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.bind((host, port))
        sid = self.next_id
        self.next_id += 1
        self.sockets[sid] = sock
        self.queues[sid] = queue.Queue()
        threading.Thread(target=self._reader, args=(sid, sock, echo), daemon=True).start()
        return {"sock": sid, "port": sock.getsockname()[1]}

    def op_send(self, sock: int, to: list, data: str = "") -> dict:
        try:
            self.sockets[sock].sendto(data.encode(), (to[0], int(to[1])))
        except OSError as exc:  # e.g. EPERM from a local firewall, ECONNREFUSED from an ICMP error
            return {"ok": False, "reason": str(exc)}
        return {"ok": True}

    def _get(self, sock: int, timeout: float):
        try:
            return self.queues[sock].get(timeout=max(0.0, timeout))
        except queue.Empty:
            return None

    def op_recv(self, sock: int, timeout: float = 1.0) -> dict:
        item = self._get(sock, timeout)
        if item is None:
            return {"timeout": True}
        return {"data": item[0], "from": list(item[1])}

    def op_drain(self, sock: int, wait: float = 0.0) -> dict:
        deadline = time.monotonic() + wait
        packets = []
        while True:
            item = self._get(sock, deadline - time.monotonic())
            if item is None:
                return {"packets": packets}
            packets.append({"data": item[0], "from": list(item[1])})

    def op_whoami(self, sock: int, to: list, timeout: float = 1.0) -> dict:
        nonce = f"whoami-{time.monotonic_ns()}"
        deadline = time.monotonic() + timeout
        self.op_send(sock, to, nonce)
        while True:
            item = self._get(sock, deadline - time.monotonic())
            if item is None:
                return {"timeout": True}
            text = item[0]
            if text.startswith(ECHO_PREFIX) and text.endswith("|" + nonce):
                ip, port = text[len(ECHO_PREFIX) :].split("|", 1)[0].split()
                return {"seen": [ip, int(port)], "from": list(item[1])}

    def op_rtt(self, sock: int, to: list, count: int = 5, interval: float = 0.02, timeout: float = 1.0) -> dict:
        rtts = []
        lost = 0
        for i in range(count):
            nonce = f"rtt-{i}-{time.monotonic_ns()}"
            sent = time.monotonic()
            self.op_send(sock, to, nonce)
            while True:
                item = self._get(sock, sent + timeout - time.monotonic())
                if item is None:
                    lost += 1
                    break
                if item[0].endswith("|" + nonce):
                    rtts.append(item[2] - sent)
                    break
            time.sleep(interval)
        return {"rtts": rtts, "lost": lost}

    def serve(self) -> None:
        print(json.dumps({"ready": True}), flush=True)
        for line in sys.stdin:
            if not line.strip():
                continue
            request = json.loads(line)
            op = request.pop("op")
            try:
                answer = getattr(self, f"op_{op}")(**request)
            except Exception as exc:  # noqa: BLE001 - any failure of an op is reported to the test, the agent keeps serving
                answer = {"error": f"{type(exc).__name__}: {exc}"}
            print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    Agent().serve()
