"""A LAN of network namespaces for mDNS tests: hosts on one bridge, plus avahi on demand.

Every namespace is named ``dpl-*``. The bridge lives in its own namespace; veth pairs are created
directly between the bridge namespace and each host (never in the root namespace). Hosts get
10.77.0.N/24 (and fd77::N/64 when the lab is IPv6), multicast on, and a 224.0.0.0/4 route.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

PREFIX = "dpl-"
REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
NODE = Path(__file__).resolve().with_name("lan_node.py")


def sh(*argv: str, check: bool = True, timeout: float = 10) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=check, capture_output=True, text=True, timeout=timeout)


def netns_unavailable() -> str | None:
    """Why namespaces cannot be used here, or None."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "needs root to create network namespaces"
    if shutil.which("ip") is None:
        return "iproute2 (ip) is not installed"
    probe = f"{PREFIX}probe-{os.getpid()}"
    result = sh("ip", "netns", "add", probe, check=False)
    if result.returncode != 0:
        return f"cannot create a network namespace: {result.stderr.strip()}"
    sh("ip", "netns", "del", probe, check=False)
    return None


def skip_or_fail(reason: str) -> None:
    """Skip with the reason; under CI a missing capability is a failure, not a skip."""
    if os.environ.get("CI"):
        pytest.fail(f"CI: {reason}")
    pytest.skip(reason)


def delete_namespace(name: str) -> None:
    """Kill every process in the namespace, then delete it (a namespace with processes survives)."""
    assert name.startswith(PREFIX), name
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = sh("ip", "netns", "pids", name, check=False).stdout.split()
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), sig)
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline and sh("ip", "netns", "pids", name, check=False).stdout.strip():
            time.sleep(0.05)
    sh("ip", "netns", "del", name, check=False)


class Proc:
    """A process in a namespace; stdout lines are collected by a thread (JSON lines parsed)."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None, json_lines: bool = True) -> None:
        self.argv = argv
        self.popen = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            start_new_session=True,
        )
        self.json_lines = json_lines
        self.events: queue.Queue[Any] = queue.Queue()
        self.seen: list[Any] = []
        self.stderr: list[str] = []
        threading.Thread(target=self._read_stdout, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()

    def _read_stdout(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            line = line.rstrip("\n")
            if self.json_lines:
                try:
                    self.events.put(json.loads(line))
                except json.JSONDecodeError:
                    self.stderr.append("stdout: " + line)
            else:
                self.events.put(line)

    def _read_stderr(self) -> None:
        assert self.popen.stderr is not None
        for line in self.popen.stderr:
            self.stderr.append(line.rstrip("\n"))

    def wait_for(self, predicate: Callable[[Any], bool], timeout: float, what: str = "event", since: int = 0) -> Any:
        """The first event matching ``predicate`` among those seen from index ``since`` on."""
        for event in self.seen[since:]:
            if predicate(event):
                return event
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"timeout waiting for {what} from {self.argv[3:5]}; seen={self.seen[-10:]} "
                    f"stderr={self.stderr[-20:]}"
                )
            try:
                event = self.events.get(timeout=min(remaining, 0.2))
            except queue.Empty:
                if self.popen.poll() is not None and self.events.empty():
                    raise AssertionError(
                        f"{self.argv} exited with {self.popen.returncode} waiting for {what}; "
                        f"stderr={self.stderr[-20:]}"
                    ) from None
                continue
            self.seen.append(event)
            if predicate(event):
                return event

    def drain(self) -> list[Any]:
        while True:
            try:
                self.seen.append(self.events.get_nowait())
            except queue.Empty:
                return self.seen

    def found(self) -> list[dict[str, Any]]:
        return [e for e in self.drain() if isinstance(e, dict) and e.get("ev") == "found"]

    def stats(self, timeout: float = 5) -> dict[str, Any]:
        """Ask a node for its stats and return the answer (a fresh one)."""
        since = len(self.drain())
        self.send(cmd="stats")
        return self.wait_for(lambda e: e.get("ev") == "stats", timeout, "stats", since=since)

    def poll_stats(self, predicate: Callable[[dict[str, Any]], bool], timeout: float, what: str) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            stats = self.stats()
            if predicate(stats):
                return stats
            if time.monotonic() > deadline:
                raise AssertionError(f"timeout waiting for {what}: last stats {stats}")
            time.sleep(0.1)

    def send(self, **command: Any) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write(json.dumps(command) + "\n")
        self.popen.stdin.flush()

    def stop(self) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=3)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout=3)


class Lab:
    def __init__(self, tag: str, hosts: list[str], *, ipv6: bool = False) -> None:
        self.tag = tag
        self.switch = f"{PREFIX}{tag}sw"
        self.hosts = {host: f"{PREFIX}{tag}{host}" for host in hosts}
        self.ipv6 = ipv6
        self.procs: list[Proc] = []
        self.tmp = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{tag}"))

    def ns(self, host: str) -> str:
        return self.hosts[host]

    def ipv4(self, host: str) -> str:
        return f"10.77.0.{list(self.hosts).index(host) + 1}"

    def ipv6_address(self, host: str) -> str:
        return f"fd77::{list(self.hosts).index(host) + 1}"

    def setup(self) -> Lab:
        for name in [self.switch, *self.hosts.values()]:
            delete_namespace(name)  # leftovers of an interrupted run
        for name in [self.switch, *self.hosts.values()]:
            sh("ip", "netns", "add", name)
            v6off = "0" if self.ipv6 and name != self.switch else "1"
            self.exec(
                name,
                "sysctl",
                "-q",
                "-w",
                f"net.ipv6.conf.all.disable_ipv6={v6off}",
                f"net.ipv6.conf.default.disable_ipv6={v6off}",
                "net.ipv4.conf.all.rp_filter=0",
                "net.ipv4.conf.default.rp_filter=0",
            )
            if v6off == "0":
                self.exec(
                    name,
                    "sysctl",
                    "-q",
                    "-w",
                    "net.ipv6.conf.all.accept_dad=0",
                    "net.ipv6.conf.default.accept_dad=0",
                    "net.ipv6.conf.default.router_solicitations=0",
                )
            sh("ip", "-n", name, "link", "set", "lo", "up")
        sw = self.switch
        sh("ip", "-n", sw, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0")
        self.exec(
            sw,
            "sysctl",
            "-q",
            "-w",
            "net.bridge.bridge-nf-call-iptables=0",
            "net.bridge.bridge-nf-call-ip6tables=0",
            "net.bridge.bridge-nf-call-arptables=0",
        )
        sh("ip", "-n", sw, "link", "set", "br0", "up")
        for host, name in self.hosts.items():
            port = f"p{self.tag}{host}"
            sh("ip", "-n", sw, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", name)
            sh("ip", "-n", sw, "link", "set", port, "master", "br0", "up")
            sh("ip", "-n", name, "addr", "add", f"{self.ipv4(host)}/24", "dev", "eth0")
            if self.ipv6:
                sh("ip", "-n", name, "addr", "add", f"{self.ipv6_address(host)}/64", "dev", "eth0", "nodad")
            sh("ip", "-n", name, "link", "set", "eth0", "up", "multicast", "on")
            sh("ip", "-n", name, "route", "add", "224.0.0.0/4", "dev", "eth0")
        return self

    def exec(self, name: str, *argv: str) -> subprocess.CompletedProcess[str]:
        return sh("ip", "netns", "exec", name, *argv)

    def spawn(self, host: str, argv: list[str], env: dict[str, str] | None = None, json_lines: bool = True) -> Proc:
        full_env = dict(os.environ)
        full_env["PYTHONPATH"] = os.pathsep.join([str(REPO), full_env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        full_env.update(env or {})
        proc = Proc(["ip", "netns", "exec", self.ns(host), *argv], env=full_env, json_lines=json_lines)
        self.procs.append(proc)
        return proc

    def node(self, host: str, **config: Any) -> Proc:
        return self.spawn(host, [PYTHON, "-u", str(NODE), json.dumps(config)])

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            with contextlib.suppress(Exception):
                proc.stop()
        self.procs.clear()

    def teardown(self) -> None:
        for proc in reversed(self.procs):
            with contextlib.suppress(Exception):
                proc.stop()
        self.procs.clear()
        for name in [*self.hosts.values(), self.switch]:
            delete_namespace(name)
        shutil.rmtree(self.tmp, ignore_errors=True)

    # --- avahi ----------------------------------------------------------------------------------

    def start_avahi(self, host: str) -> dict[str, str]:
        """A private system bus and avahi-daemon in ``host``; returns the env for avahi tools."""
        for tool in ("avahi-daemon", "avahi-browse", "avahi-publish", "dbus-daemon", "unshare"):
            if shutil.which(tool) is None:
                skip_or_fail(f"{tool} is not installed (Debian: avahi-daemon avahi-utils dbus util-linux)")
        base = Path(tempfile.mkdtemp(prefix=f"avahi-{host}-", dir=self.tmp))
        (base / "run").mkdir()
        bus = base / "bus"
        (base / "bus.conf").write_text(_BUS_CONF.format(socket=bus))
        (base / "avahi.conf").write_text(
            _AVAHI_CONF.format(host=f"dpl-avahi-{host}", ipv6="yes" if self.ipv6 else "no")
        )
        env = {"DBUS_SYSTEM_BUS_ADDRESS": f"unix:path={bus}"}
        dbus = self.spawn(
            host, ["dbus-daemon", f"--config-file={base / 'bus.conf'}", "--nofork", "--nopidfile"], json_lines=False
        )
        deadline = time.monotonic() + 5
        while not bus.exists():
            if time.monotonic() > deadline or dbus.popen.poll() is not None:
                raise AssertionError(f"private dbus-daemon did not start: {dbus.stderr}")
            time.sleep(0.02)
        # avahi-daemon keeps its pid file and socket in /run/avahi-daemon: give it a private /run.
        avahi = self.spawn(
            host,
            [
                "unshare",
                "-m",
                "sh",
                "-c",
                f"mount --bind {base / 'run'} /run && exec avahi-daemon --no-drop-root --no-chroot "
                f"--no-rlimits -f {base / 'avahi.conf'}",
            ],
            env=env,
            json_lines=False,
        )
        deadline = time.monotonic() + 10
        while not any("Server startup complete" in line for line in avahi.stderr):
            if time.monotonic() > deadline or avahi.popen.poll() is not None:
                raise AssertionError(f"avahi-daemon did not start: {avahi.stderr}")
            time.sleep(0.02)
        return env


_BUS_CONF = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <auth>EXTERNAL</auth>
  <listen>unix:path={socket}</listen>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_type="method_return"/>
    <allow send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
  </policy>
</busconfig>
"""

_AVAHI_CONF = """[server]
host-name={host}
use-ipv4=yes
use-ipv6={ipv6}
allow-interfaces=eth0
enable-dbus=yes
disallow-other-stacks=no
ratelimit-interval-usec=1000000
ratelimit-burst=1000
[wide-area]
enable-wide-area=no
[publish]
publish-hinfo=no
publish-workstation=no
publish-addresses=yes
[reflector]
[rlimits]
"""
