"""Shared pieces of the benchmark harness: worker processes speaking JSON lines, /proc readings,
CPU pinning, the event loop choice, the hard deadline every process carries.

Every worker is ``python -m benchmarks.workers.<name> ...``: it prints one JSON object per line on
stdout (``{"event": ...}``), takes commands as JSON lines on stdin, writes human noise to stderr
(captured in a log file next to the results), and exits by itself at ``--deadline`` seconds no
matter what (a watchdog thread calls ``os._exit``). The orchestrator only ever ends processes it
started, by their pid.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def load_module(name: str, path: Path) -> Any:
    """The Python file ``path`` as module ``name`` (loaded once): for the test suite's helpers
    (tests/beacon/client.py, hostile.py), which are not importable as a package."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# --- /proc ---------------------------------------------------------------------------------------


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` (VmRSS)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by ``pid`` (all its threads)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def udp_drops(port: int) -> int:
    """Datagrams the kernel dropped for the UDP socket(s) bound to ``port`` (receive buffer
    full): the last column of /proc/net/udp."""
    total = 0
    for path in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            with open(path, encoding="ascii") as f:
                next(f)
                for line in f:
                    fields = line.split()
                    if int(fields[1].rsplit(":", 1)[1], 16) == port:
                        total += int(fields[-1])
        except OSError:
            pass
    return total


def cpu_count() -> int:
    return len(os.sched_getaffinity(0))


def taskset_prefix(core: int | None) -> list[str]:
    if core is None or shutil.which("taskset") is None or cpu_count() < 2:
        return []
    return ["taskset", "-c", str(core)]


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- worker side ---------------------------------------------------------------------------------


def emit(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def arm_deadline(seconds: float) -> None:
    """Exit the process after ``seconds``, whatever the event loop is doing."""

    def expire() -> None:
        sys.stderr.write(f"deadline of {seconds:.0f}s reached, exiting\n")
        sys.stderr.flush()
        os._exit(3)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()


def run_loop(main: Callable[[], Any], use_uvloop: bool, profile: str | None = None) -> Any:
    """Run ``main()`` (a coroutine function) in asyncio or uvloop (under cProfile if asked)."""
    profiler = None
    if profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    try:
        if use_uvloop:
            import uvloop

            return uvloop.run(main())
        return asyncio.run(main())
    finally:
        if profiler is not None:
            import pstats

            profiler.disable()
            profiler.dump_stats(profile)
            pstats.Stats(profile, stream=sys.stderr).sort_stats("tottime").print_stats(35)


async def stdin_commands() -> asyncio.Queue[dict[str, Any] | None]:
    """A queue of JSON commands read from stdin (None at EOF: the orchestrator went away)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

    def reader() -> None:
        for line in sys.stdin:
            line = line.strip()
            if line:
                loop.call_soon_threadsafe(queue.put_nowait, json.loads(line))
        loop.call_soon_threadsafe(queue.put_nowait, None)

    threading.Thread(target=reader, daemon=True).start()
    return queue


async def commands_until_stop(queue: asyncio.Queue[dict[str, Any] | None]) -> Any:
    """The commands of :func:`stdin_commands` until EOF or ``{"cmd": "stop"}``."""
    while True:
        command = await queue.get()
        if command is None or command.get("cmd") == "stop":
            return
        yield command


CHUNK = 64 * 1024  # bytes per write of a bulk transfer


async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Read a stream to its end, answer ``done <bytes>``."""
    total = 0
    while True:
        data = await reader.read(1 << 20)
        if not data:
            break
        total += len(data)
    writer.write(b"done %d" % total)
    writer.write_eof()


async def send_stream(reader: Any, writer: Any, size: int, *, drain: bool = True, yield_each: bool = False) -> float:
    """Write ``size`` bytes in CHUNK writes, EOF, wait for the sink's ``done <size>``; returns the
    seconds from the first write to the answer. ``drain``: await ``writer.drain()`` after each
    write; ``yield_each``: also let the loop run (plain aioquic's drain never waits, qh3 has none)."""
    payload = os.urandom(CHUNK)
    started = time.perf_counter()
    sent = 0
    while sent < size:
        chunk = payload[: min(CHUNK, size - sent)]
        writer.write(chunk)
        sent += len(chunk)
        if drain:
            await writer.drain()
        if yield_each:
            await asyncio.sleep(0)
    writer.write_eof()
    answer = await reader.read()
    elapsed = time.perf_counter() - started
    if answer != b"done %d" % size:
        raise RuntimeError(f"receiver answered {answer[:40]!r}")
    return elapsed


async def bulk_client(commands: asyncio.Queue[dict[str, Any] | None], client: Any, **send: Any) -> None:
    """A QUIC client's command loop: ``{"cmd": "send", "size", "repeat", "timeout"}`` sends on a
    new stream per transfer (``send``: options of :func:`send_stream`), "sent" after each."""
    async for command in commands_until_stop(commands):
        if command["cmd"] == "send":
            for _ in range(command.get("repeat", 1)):
                reader, writer = await client.create_stream()
                elapsed = await asyncio.wait_for(
                    send_stream(reader, writer, command["size"], **send), command["timeout"]
                )
                emit("sent", bytes=command["size"], seconds=elapsed)
            emit("done")


def worker_args(parser: Any) -> Any:
    parser.add_argument("--deadline", type=float, default=600.0, help="hard exit after this many seconds")
    if not any("--uvloop" in action.option_strings for action in parser._actions):
        parser.add_argument("--uvloop", action="store_true")
    parser.add_argument("--profile", help="write cProfile stats here (and a summary to the log)")
    args = parser.parse_args()
    arm_deadline(args.deadline)
    sys.setrecursionlimit(10000)
    return args


# --- orchestrator side ---------------------------------------------------------------------------


class WorkerError(RuntimeError):
    pass


class Worker:
    """A child process speaking JSON lines. Start with :meth:`start`, always :meth:`stop`."""

    def __init__(self, name: str, args: list[str], *, core: int | None = None, log_dir: Path, deadline: float) -> None:
        self.name = name
        self.args = args
        self.core = core
        self.log_path = log_dir / f"{name}.log"
        self.deadline = deadline
        self.proc: asyncio.subprocess.Process | None = None
        self._log: Any = None
        self.pending: list[dict[str, Any]] = []
        self.env: dict[str, str] | None = None
        self.python = sys.executable
        self.root = ROOT  # cwd and PYTHONPATH (benchmarks.installed: a copy of benchmarks/ only)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def start(self, module: str) -> Worker:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - the worker writes to it until it is stopped
        args = list(self.args)
        split = args.index("--") if "--" in args else len(args)  # after "--": another program's
        args[split:split] = ["--deadline", str(int(self.deadline))]
        command = [*taskset_prefix(self.core), self.python, "-m", f"benchmarks.workers.{module}", *args]
        self._log.write((" ".join(command) + "\n").encode())
        self._log.flush()
        self.proc = await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=self._log,
            cwd=str(self.root),
            env={**(self.env or os.environ), "PYTHONPATH": str(self.root), "PYTHONUNBUFFERED": "1"},
            limit=16 * 1024 * 1024,
        )
        return self

    def send(self, **command: Any) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        with contextlib.suppress(BrokenPipeError, ConnectionResetError, RuntimeError):
            self.proc.stdin.write((json.dumps(command) + "\n").encode())

    async def next_event(self, timeout: float) -> dict[str, Any]:
        if self.pending:
            return self.pending.pop(0)
        assert self.proc is not None and self.proc.stdout is not None
        try:
            line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        except TimeoutError as exc:
            raise WorkerError(f"{self.name}: no answer within {timeout:.0f}s (log: {self.log_path})") from exc
        if not line:
            code = await self.proc.wait()
            raise WorkerError(f"{self.name} exited with {code}: {self.tail()}")
        return json.loads(line)

    async def expect(self, event: str, timeout: float) -> dict[str, Any]:
        """Wait for ``event`` (other events are kept for later, errors raise)."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        skipped: list[dict[str, Any]] = []
        try:
            while True:
                remaining = end - loop.time()
                if remaining <= 0:
                    raise WorkerError(f"{self.name}: no {event!r} within {timeout:.0f}s (log: {self.log_path})")
                message = await self.next_event(remaining)
                if message.get("event") == event:
                    return message
                if message.get("event") == "error":
                    raise WorkerError(f"{self.name}: {message.get('message')}")
                skipped.append(message)
        finally:
            self.pending[:0] = skipped

    def tail(self, lines: int = 8) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(text[-lines:])

    async def stop(self, grace: float = 5.0) -> None:
        if self.proc is None:
            return
        if self.proc.returncode is None:
            self.send(cmd="stop")
            with contextlib.suppress(Exception):
                assert self.proc.stdin is not None
                self.proc.stdin.close()
            try:
                await asyncio.wait_for(self.proc.wait(), grace)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.proc.pid, signal.SIGKILL)
                await self.proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None


class Stopwatch:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100.0
    low = int(k)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (k - low)


def median(values: list[float]) -> float:
    return percentile(values, 50)
