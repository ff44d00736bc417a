"""The NAT lab: network namespaces, veth links, nftables routers, link delay, packet capture.

Everything lives in namespaces named ``dpn-<pid>-<n>-<node>``; nothing is created in the root
namespace (veth pairs are made from inside a lab namespace, straight into another one) and
nothing is routed but the lab's own ranges: 203.0.113.0/24 is the "internet", 100.64.0.0/10
the carrier-grade NAT's inside, 192.168.x.0/24 the home LANs. There is no default route.

    with Lab() as lab:                       # or the ``lab`` fixture in tests/natlab/conftest.py
        lab.add_public("beacon", "203.0.113.10")
        lab.add_home("A", "full_cone", hosts=2)          # router A, hosts A1 and A2
        proc = lab.popen("A1", [sys.executable, "-c", "print('hi')"])
        proc.wait(5); print(proc.stdout)

See README.md beside this file for the topology, the flavours and the delay.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import queue
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
NS_PREFIX = "dpn-"
INTERNET = ipaddress.ip_network("203.0.113.0/24")
CORE_ADDRESS = "203.0.113.1"
CGNAT_RANGE = ipaddress.ip_network("100.64.0.0/10")
NODE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,11}$")

FLAVOURS = (
    "port_restricted",  # Linux masquerade: endpoint-independent mapping (port kept), filtering by address+port
    "address_restricted",  # endpoint-independent mapping, filtering by address only
    "full_cone",  # endpoint-independent mapping, no filtering once a mapping exists
    "symmetric",  # masquerade fully-random: a new random port per destination
    "symmetric_random",  # masquerade random (hash-based port per destination)
    "udp443_only",  # port_restricted, but outbound UDP only to destination port 443
    "udp_blocked",  # port_restricted, no UDP forwarded at all
    "proxy_only",  # no UDP and no TCP forwarded: the only way out is an HTTP proxy on the router (start_proxy)
)
PROXY_PORT = 3128
FLAVOUR_ALIASES = {"masquerade": "port_restricted", "cone": "port_restricted"}
MAPPING_TIMEOUT_S = 120  # life of an emulated cone mapping since the last outbound packet


class LabUnavailable(RuntimeError):
    """The machine cannot run the lab (not root, no `ip netns`, no nftables...)."""


class LabError(RuntimeError):
    pass


# --------------------------------------------------------------------------------------------
# Capability check
# --------------------------------------------------------------------------------------------

_capability: str | None | bool = False  # False = not checked yet


def unavailable_reason() -> str | None:
    """Why this machine cannot run the NAT lab, or None when it can. Cached per process."""
    global _capability
    if _capability is not False:
        return _capability  # type: ignore[return-value]  # typed loosely on purpose
    reason = None
    if not sys.platform.startswith("linux"):
        reason = f"NAT lab needs Linux network namespaces (platform is {sys.platform})"
    elif os.geteuid() != 0:
        reason = "NAT lab needs root (network namespaces, nftables)"
    else:
        missing = [tool for tool in ("ip", "nft", "conntrack", "tcpdump") if shutil.which(tool) is None]
        if not any(shutil.which(t) for t in ("iptables-legacy", "iptables-nft", "iptables")):
            missing.append("iptables")
        if missing:
            reason = "NAT lab needs these commands: " + ", ".join(missing)
    if reason is None:
        probe = f"{NS_PREFIX}{os.getpid()}-check"
        try:
            _sh(["ip", "netns", "add", probe])
            try:
                _sh(["ip", "netns", "exec", probe, "nft", "add", "table", "ip", "probe"])
            finally:
                subprocess.run(["ip", "netns", "del", probe], capture_output=True)
        except LabError as exc:
            reason = f"cannot create a network namespace with nftables here: {exc}"
    _capability = reason
    return reason


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def _sh(argv: Sequence[str], *, input: str | None = None, timeout: float = 30, check: bool = True) -> str:
    result = subprocess.run(list(argv), input=input, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        shown = " ".join(argv)
        if input:
            shown += "\n  <<<\n" + "\n".join("  " + line for line in input.splitlines())
        raise LabError(f"command failed ({result.returncode}): {shown}\n{result.stderr.strip()}")
    return result.stdout


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _namespaces() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _kill_namespace(ns: str) -> None:
    """Kill every process inside ``ns`` (a namespace with processes outlives `ip netns del`), then delete it."""
    assert ns.startswith(NS_PREFIX), ns
    for _ in range(20):
        pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        time.sleep(0.02)
    subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def sweep_stale_namespaces() -> list[str]:
    """Delete lab namespaces left behind by a lab process that no longer exists (crash, SIGKILL)."""
    removed = []
    for ns in _namespaces():
        m = re.match(rf"^{NS_PREFIX}(\d+)-", ns)
        if m and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1))):
            _kill_namespace(ns)
            removed.append(ns)
    return removed


def lab_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for processes in lab hosts: the repository importable, output unbuffered."""
    env = dict(os.environ)
    paths = [str(REPO_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env["PYTHONUNBUFFERED"] = "1"
    if extra:
        env.update(extra)
    return env


# --------------------------------------------------------------------------------------------
# Router rulesets
# --------------------------------------------------------------------------------------------


def normalise_flavour(flavour: str, hairpin: bool | None = None) -> tuple[str, bool]:
    """Accept ``"full_cone"``, ``"full_cone+hairpin"``, aliases; return (flavour, hairpin)."""
    name = flavour.strip().lower().replace("-", "_")
    pin = False
    if name.endswith("+hairpin"):
        name, pin = name[: -len("+hairpin")], True
    name = FLAVOUR_ALIASES.get(name, name)
    if name not in FLAVOURS:
        raise ValueError(f"unknown NAT flavour {flavour!r}; known: {', '.join(FLAVOURS)} (+hairpin)")
    return name, (pin if hairpin is None else hairpin)


def router_ruleset(
    *,
    flavour: str,
    hairpin: bool,
    wan_ip: str,
    lan_net: str,
    wan: str = "wan",
    lan: str = "lan",
    portmap: tuple[bool, bool, bool] | None = None,
    ipv6: bool = False,
) -> str:
    """The nftables ruleset of a lab router (a whole file for ``nft -f``; it replaces the old one).

    Mapping and filtering:
      * port_restricted, udp443_only, udp_blocked: plain ``masquerade`` (conntrack does the rest).
      * symmetric / symmetric_random: ``masquerade fully-random`` / ``masquerade random``.
      * full_cone / address_restricted: emulated. A chain after source NAT learns, for each
        outbound UDP packet, external port -> internal addr:port (@ext2int), the reverse
        (@int2ext, so an internal socket keeps its external port for every destination) and
        external port . remote address (@seen). Inbound packets to the WAN address are DNATed
        through @ext2int: for full_cone always, for address_restricted only when the remote
        address is in @seen.
      * hairpin: packets from the LAN to the WAN address are DNATed through @ext2int too, then
        source-NATed to the WAN address (the receiver sees the sender's public mapping).
        Hairpinned packets are not filtered.
    Unsolicited inbound packets are dropped, never accepted: an accepted one would make a
    conntrack entry that steals the port.

    ``portmap`` (pcp, natpmp, upnp): miniupnpd runs on the router. Its chains live in ``table inet
    miniupnpd`` (DNAT of mapped ports before ours, forward accepts); the router answers its LAN,
    except PCP (version byte 2) or NAT-PMP (version byte 0) on port 5351 when switched off.

    ``ipv6``: the LAN has global IPv6 and no NAT66; ``table ip6 firewall`` is what home routers
    do: outbound allowed, inbound only for established flows (so IPv6 needs punching too).
    """
    flavour, hairpin = normalise_flavour(flavour, hairpin)
    cone = flavour in ("full_cone", "address_restricted")
    dynamic = f"flags dynamic,timeout; timeout {MAPPING_TIMEOUT_S}s;"
    learn = (
        "update @ext2int { udp sport : ct original ip saddr . ct original proto-src } "
        "update @int2ext { ct original ip saddr . ct original proto-src : ip saddr . udp sport } "
        "update @seen { udp sport . ip daddr }"
    )
    maps = f"""
  map ext2int {{ type inet_service : ipv4_addr . inet_service; {dynamic} }}
  map int2ext {{ type ipv4_addr . inet_service : ipv4_addr . inet_service; {dynamic} }}
  set seen {{ type inet_service . ipv4_addr; flags dynamic,timeout; timeout {MAPPING_TIMEOUT_S}s; }}"""
    pre = []
    if flavour == "full_cone":
        pre.append(f'iifname "{wan}" ip daddr {wan_ip} dnat ip to udp dport map @ext2int')
    elif flavour == "address_restricted":
        pre.append(f'iifname "{wan}" ip daddr {wan_ip} udp dport . ip saddr @seen dnat ip to udp dport map @ext2int')
    if hairpin:
        pre.append(f'iifname "{lan}" ip daddr {wan_ip} dnat ip to udp dport map @ext2int')

    keep_mapping = "meta l4proto udp ip saddr . udp sport @int2ext snat ip to ip saddr . udp sport map @int2ext"
    if flavour == "symmetric":
        wan_nat, pin_nat = ["masquerade fully-random"], [f"snat ip to {wan_ip} fully-random"]
    elif flavour == "symmetric_random":
        wan_nat, pin_nat = ["masquerade random"], [f"snat ip to {wan_ip} random"]
    elif cone:
        wan_nat, pin_nat = [keep_mapping, "masquerade"], [keep_mapping, f"snat ip to {wan_ip}"]
    else:
        wan_nat, pin_nat = ["masquerade"], [f"snat ip to {wan_ip}"]
    post = [f'oifname "{wan}" ip saddr {lan_net} {rule}' for rule in wan_nat]
    if hairpin:
        post += [f'oifname "{lan}" ip saddr {lan_net} ct status dnat {rule}' for rule in pin_nat]

    forward = []
    if flavour == "udp443_only":
        forward.append(f'iifname "{lan}" oifname "{wan}" udp dport != 443 drop')
    elif flavour == "udp_blocked":
        forward.append("meta l4proto udp drop")
    elif flavour == "proxy_only":
        forward += ["meta l4proto udp drop", f'iifname "{lan}" oifname "{wan}" meta l4proto tcp drop']
    proxy = [f'iifname "{lan}" tcp dport {PROXY_PORT} accept'] if flavour == "proxy_only" else []
    forward += [
        "ct state established,related accept",
        f'iifname "{lan}" oifname "{wan}" accept',
        f'iifname "{wan}" oifname "{lan}" ct status dnat accept',
    ]
    if hairpin:
        forward.append(f'iifname "{lan}" oifname "{lan}" ct status dnat accept')

    def chain(lines: Iterable[str]) -> str:
        return "".join(f"\n    {line}" for line in lines)

    inputs = []
    upnp_tables = ""
    if ipv6:
        upnp_tables += f"""
table ip6 firewall {{
  chain forward {{
    type filter hook forward priority filter; policy drop;
    ct state established,related accept
    iifname "{lan}" oifname "{wan}" accept
  }}
}}
"""
    if portmap is not None:
        use_pcp, use_natpmp, _ = portmap
        if not use_pcp:
            inputs.append(f'iifname "{lan}" udp dport 5351 @th,64,8 2 drop')
        if not use_natpmp:
            inputs.append(f'iifname "{lan}" udp dport 5351 @th,64,8 0 drop')
        inputs.append(f'iifname "{lan}" accept')
        upnp_tables += """
table inet miniupnpd {
  chain forward {
    type filter hook forward priority filter - 1; policy accept;
    jump miniupnpd
  }
  chain miniupnpd {
  }
  chain prerouting {
    type nat hook prerouting priority dstnat - 1; policy accept;
    jump prerouting_miniupnpd
  }
  chain postrouting {
    type nat hook postrouting priority srcnat - 1; policy accept;
    jump postrouting_miniupnpd
  }
  chain prerouting_miniupnpd {
  }
  chain postrouting_miniupnpd {
  }
}
"""

    return f"""flush ruleset
table ip natlab {{{maps}
  chain pre {{
    type nat hook prerouting priority dstnat; policy accept;{chain(pre)}
  }}
  chain post {{
    type nat hook postrouting priority srcnat; policy accept;{chain(post)}
  }}
  chain learn {{
    type filter hook postrouting priority srcnat + 10; policy accept;
    oifname "{wan}" ct direction original {learn}
  }}
  chain forward {{
    type filter hook forward priority filter; policy drop;{chain(forward)}
  }}
  chain input {{
    type filter hook input priority filter; policy drop;
    iifname "lo" accept
    ct state established,related accept
    icmp type echo-request accept{chain(proxy)}{chain(inputs)}
  }}
}}
{upnp_tables}"""


# --------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------


class LabProcess:
    """A process started in a lab host. Output goes to files unless pipes were asked for.

    ``stdout`` / ``stderr`` read what was written so far; ``wait_for`` polls for a regex.
    The lab kills it at teardown if it is still running.
    """

    def __init__(
        self,
        popen: subprocess.Popen,
        node: str,
        argv: Sequence[str],
        stdout_path: Path | None,
        stderr_path: Path | None,
    ):
        self.popen = popen
        self.node = node
        self.argv = list(argv)
        self.stdout_path = stdout_path
        self.stderr_path = stderr_path

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def running(self) -> bool:
        return self.popen.poll() is None

    @staticmethod
    def _read(path: Path | None) -> str:
        if path is None:
            return ""
        try:
            return path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    @property
    def stdout(self) -> str:
        return self._read(self.stdout_path)

    @property
    def stderr(self) -> str:
        return self._read(self.stderr_path)

    def json_lines(self) -> list[Any]:
        """Every stdout line that parses as JSON."""
        out = []
        for line in self.stdout.splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out

    def wait(self, timeout: float | None = None) -> int:
        return self.popen.wait(timeout)

    def wait_for(self, pattern: str, timeout: float = 10.0, stream: str = "stdout") -> re.Match:
        """Wait until ``pattern`` appears in the output; raise (with the output) if it does not."""
        regex = re.compile(pattern, re.MULTILINE)
        deadline = time.monotonic() + timeout
        while True:
            text = self.stdout if stream == "stdout" else self.stderr
            m = regex.search(text)
            if m:
                return m
            if time.monotonic() > deadline or self.popen.poll() is not None:
                if self.popen.poll() is not None:  # one last look: output may have landed at exit
                    m = regex.search(self.stdout if stream == "stdout" else self.stderr)
                    if m:
                        return m
                raise LabError(
                    f"{self.node}: {pattern!r} not seen in {stream} within {timeout}s "
                    f"(returncode={self.popen.poll()})\n--- stdout\n{self.stdout[-3000:]}"
                    f"\n--- stderr\n{self.stderr[-3000:]}"
                )
            time.sleep(0.01)

    def terminate(self) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(2)

    def describe(self) -> str:
        return f"[{self.node}] pid {self.pid} rc={self.popen.poll()} {' '.join(self.argv)[:200]}"


class UdpAgent:
    """Client of ``agent.py`` running in a lab host: plain UDP sockets driven from the test."""

    def __init__(self, lab: Lab, node: str):
        self.node = node
        self.process = lab.popen(
            node, [sys.executable, str(HERE / "agent.py")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        self._read(10.0)  # {"ready": true}

    def _pump(self) -> None:
        stream = self.process.popen.stdout
        assert stream is not None
        try:
            for line in stream:
                self._lines.put(line)
        except (OSError, ValueError):
            pass
        self._lines.put(None)

    def _read(self, timeout: float) -> dict:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise LabError(f"agent on {self.node} did not answer within {timeout}s") from None
        if line is None:
            raise LabError(f"agent on {self.node} exited: {self.process.stderr[-2000:]}")
        return json.loads(line)

    def call(self, op: str, *, answer_within: float = 5.0, **args: Any) -> dict:
        """Send one command; wait for its answer (``answer_within`` seconds beyond the
        command's own ``timeout``/``wait``)."""
        stdin = self.process.popen.stdin
        assert stdin is not None
        stdin.write(json.dumps({"op": op, **args}) + "\n")
        stdin.flush()
        answer = self._read(answer_within + float(args.get("timeout", 0)) + float(args.get("wait", 0)))
        if "error" in answer:
            raise LabError(f"agent on {self.node}: {op} failed: {answer['error']}")
        return answer

    def open(self, port: int = 0, echo: bool = False, rcvbuf: int = 0) -> tuple[int, int]:
        """Open a UDP socket (``echo``: answer every datagram with ``SEEN ip port|payload``;
        ``rcvbuf``: receive buffer in bytes, for bursts); return (socket id, local port)."""
        answer = self.call("open", port=port, echo=echo, rcvbuf=rcvbuf)
        return answer["sock"], answer["port"]

    def send(self, sock: int, to: tuple[str, int], data: str = "x") -> bool:
        return self.call("send", sock=sock, to=list(to), data=data)["ok"]

    def recv(self, sock: int, timeout: float = 1.0) -> tuple[str, tuple[str, int]] | None:
        answer = self.call("recv", sock=sock, timeout=timeout)
        if answer.get("timeout"):
            return None
        return answer["data"], (answer["from"][0], answer["from"][1])

    def drain(self, sock: int, wait: float = 0.0) -> list[tuple[str, tuple[str, int]]]:
        answer = self.call("drain", sock=sock, wait=wait)
        return [(p["data"], (p["from"][0], p["from"][1])) for p in answer["packets"]]

    def whoami(self, sock: int, echo: tuple[str, int], timeout: float = 1.0) -> tuple[str, int] | None:
        """Ask an echo socket which address this socket's packets arrive from."""
        answer = self.call("whoami", sock=sock, to=list(echo), timeout=timeout)
        if answer.get("timeout"):
            return None
        return answer["seen"][0], answer["seen"][1]

    def rtt(
        self, sock: int, echo: tuple[str, int], count: int = 5, interval: float = 0.02, timeout: float = 1.0
    ) -> list[float]:
        answer = self.call(
            "rtt",
            sock=sock,
            to=list(echo),
            count=count,
            interval=interval,
            timeout=timeout,
            answer_within=5 + count * (interval + timeout),
        )
        return answer["rtts"]

    def close(self) -> None:
        stdin = self.process.popen.stdin
        if stdin and not stdin.closed:
            with contextlib.suppress(OSError):
                stdin.close()
        self.process.kill()


# --------------------------------------------------------------------------------------------
# Packet capture
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Packet:
    time: float
    src: str
    dst: str
    proto: str  # "udp", "tcp", "icmp" or the IP protocol number as text
    sport: int | None
    dport: int | None
    payload: bytes
    length: int  # IP total length


def parse_pcap(data: bytes) -> list[Packet]:
    """IPv4 packets of a pcap file (link types Ethernet, Linux cooked v1/v2, raw IP)."""
    if len(data) < 24:
        return []
    magic = data[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        endian = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        endian = ">"
    else:
        raise LabError("not a pcap file")
    nano = magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
    (linktype,) = struct.unpack_from(endian + "I", data, 20)
    packets = []
    offset = 24
    while offset + 16 <= len(data):
        sec, frac, caplen, _ = struct.unpack_from(endian + "IIII", data, offset)
        frame = data[offset + 16 : offset + 16 + caplen]
        offset += 16 + caplen
        stamp = sec + frac / (1e9 if nano else 1e6)
        if linktype == 1:  # Ethernet
            ethertype, ip = struct.unpack_from("!H", frame, 12)[0], frame[14:]
            if ethertype == 0x8100 and len(frame) >= 18:
                ethertype, ip = struct.unpack_from("!H", frame, 16)[0], frame[18:]
        elif linktype == 113:  # Linux cooked v1
            ethertype, ip = struct.unpack_from("!H", frame, 14)[0], frame[16:]
        elif linktype == 276:  # Linux cooked v2
            ethertype, ip = struct.unpack_from("!H", frame, 0)[0], frame[20:]
        elif linktype in (12, 101, 228):  # raw IPv4
            ethertype, ip = 0x0800, frame
        else:
            continue
        if ethertype != 0x0800 or len(ip) < 20 or ip[0] >> 4 != 4:
            continue
        ihl = (ip[0] & 0x0F) * 4
        total = struct.unpack_from("!H", ip, 2)[0]
        proto_num = ip[9]
        src = ".".join(map(str, ip[12:16]))
        dst = ".".join(map(str, ip[16:20]))
        body = ip[ihl:total] if total >= ihl else ip[ihl:]
        sport = dport = None
        if proto_num == 17 and len(body) >= 8:
            sport, dport = struct.unpack_from("!HH", body, 0)
            proto, payload = "udp", body[8:]
        elif proto_num == 6 and len(body) >= 20:
            sport, dport = struct.unpack_from("!HH", body, 0)
            proto, payload = "tcp", body[(body[12] >> 4) * 4 :]
        elif proto_num == 1:
            proto, payload = "icmp", body
        else:
            proto, payload = str(proto_num), body
        packets.append(Packet(stamp, src, dst, proto, sport, dport, bytes(payload), total))
    return packets


class Capture:
    """tcpdump on one interface of one lab namespace, writing a pcap file; ``stop()`` parses it."""

    def __init__(self, lab: Lab, node: str, iface: str, bpf: str, path: Path):
        self.node = node
        self.iface = iface
        self.path = path
        argv = ["tcpdump", "-i", iface, "-n", "-U", "--immediate-mode", "-s", "0", "-Z", "root", "-w", str(path)]
        argv += bpf.split() if bpf else []
        self.process = lab.popen(node, argv)
        self.process.wait_for(r"listening on", timeout=10, stream="stderr")
        self._packets: list[Packet] | None = None

    def stop(self) -> list[Packet]:
        if self._packets is None:
            if self.process.running():
                self.process.popen.send_signal(signal.SIGINT)
                try:
                    self.process.wait(5)
                except subprocess.TimeoutExpired:
                    self.process.kill()
            self._packets = parse_pcap(self.path.read_bytes()) if self.path.exists() else []
        return self._packets

    @property
    def packets(self) -> list[Packet]:
        return self.stop()

    def payload_contains(self, marker: bytes) -> list[Packet]:
        """Packets whose payload holds ``marker`` (e.g. a plaintext that must never be seen)."""
        return [p for p in self.stop() if marker in p.payload]

    def __enter__(self) -> Capture:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------------------------------
# The lab
# --------------------------------------------------------------------------------------------


@dataclass
class Node:
    name: str
    ns: str
    kind: str  # "core", "public", "router", "host"
    parent: str | None = None  # "core" or a router name
    address: str = ""  # address on the uplink (public for public hosts and core-attached routers)
    uplink: str = ""  # interface towards the parent: "eth0" (hosts) or "wan" (routers)
    # routers only
    lan_net: ipaddress.IPv4Network | None = None
    lan_ip: str = ""
    flavour: str = ""
    hairpin: bool = False
    children: list[str] = field(default_factory=list)
    next_lan_host: int = 2
    portmap: tuple[bool, bool, bool] | None = None  # miniupnpd: (pcp, natpmp, upnp)
    address6: str = ""  # global IPv6 address (enable_ipv6), "" without IPv6


class Host:
    """A handle on one lab node: ``lab.host("A1").popen([...])`` is ``lab.popen("A1", [...])``."""

    def __init__(self, lab: Lab, name: str):
        if name not in lab.nodes:
            raise KeyError(f"no node {name!r} in the lab (have: {', '.join(lab.nodes)})")
        self.lab = lab
        self.name = name

    @property
    def address(self) -> str:
        return self.lab.address(self.name)

    @property
    def public_address(self) -> str:
        return self.lab.public_address(self.name)

    @property
    def ns(self) -> str:
        return self.lab.ns(self.name)

    def run(self, argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess:
        return self.lab.run(self.name, argv, **kwargs)

    def popen(self, argv: Sequence[str], **kwargs: Any) -> LabProcess:
        return self.lab.popen(self.name, argv, **kwargs)

    def python(self, code: str, *args: str, **kwargs: Any) -> LabProcess:
        return self.lab.python(self.name, code, *args, **kwargs)

    def agent(self) -> UdpAgent:
        return self.lab.agent(self.name)

    def capture(self, iface: str | None = None, bpf: str = "") -> Capture:
        return self.lab.capture(self.name, iface, bpf)

    def __repr__(self) -> str:
        return f"<Host {self.name} {self.address}>"


class Lab:
    """Builder for a lab topology; every namespace and process it starts is removed by ``close()``.

    Nodes: ``core`` (always there), public hosts, routers (home routers or a carrier-grade NAT),
    hosts behind routers. A router's parent is the core or another router (a home router behind a
    CGNAT). Names: a letter then up to 11 letters, digits or underscores.
    """

    _count = 0

    def __init__(self, *, delay_ms: float = 0.0, workdir: str | Path | None = None, delay_backend: str | None = None):
        reason = unavailable_reason()
        if reason:
            raise LabUnavailable(reason)
        sweep_stale_namespaces()
        Lab._count += 1
        self._prefix = f"{NS_PREFIX}{os.getpid()}-{Lab._count}-"
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="dpn-lab-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.nodes: dict[str, Node] = {}
        self.processes: list[LabProcess] = []
        self._infrastructure: list[LabProcess] = []
        self.captures: list[Capture] = []
        self._agents: list[UdpAgent] = []
        self._namespaces: list[str] = []
        self._next_public = 100
        self._next_lan = 1
        self._default_delay = float(delay_ms)
        self._link_delay: dict[str, float] = {}
        self._delay_backend = delay_backend or os.environ.get("DPN_NATLAB_DELAY") or None
        self._delayer: LabProcess | None = None
        self._stun: LabProcess | None = None
        self._delayer_commands = 0
        self._netem_links: set[str] = set()
        self._log_seq = 0
        self.closed = False
        self.timings: dict[str, float] = {}
        try:
            core = self._new_namespace("core", "core")
            self._setup_namespace(core, router=True, commands=["link set lo up"])
        except BaseException:
            self.close()
            raise

    # ---------------------------------------------------------------- namespaces and links

    def _new_namespace(self, name: str, kind: str, **fields: Any) -> Node:
        if name in self.nodes:
            raise ValueError(f"node {name!r} already exists")
        if name != "core" and not NODE_NAME.match(name):
            raise ValueError(f"bad node name {name!r}: a letter then up to 11 letters, digits or _")
        ns = self._prefix + name
        self._namespaces.append(ns)  # tracked before it exists: cleanup never misses it
        _sh(["ip", "netns", "add", ns])
        node = Node(name=name, ns=ns, kind=kind, **fields)
        self.nodes[name] = node
        return node

    def _setup_namespace(self, node: Node, *, router: bool, commands: list[str], nft: str | None = None) -> None:
        """Sysctls (IPv6 off, rp_filter 0, no redirects, forwarding on routers), then ip batch, then nft."""
        script = f"""set -e
cd /proc/sys/net
echo 1 > ipv6/conf/all/disable_ipv6 2>/dev/null || true
echo 1 > ipv6/conf/default/disable_ipv6 2>/dev/null || true
for f in ipv4/conf/*/rp_filter ipv4/conf/*/send_redirects ipv4/conf/*/accept_redirects; do echo 0 > $f; done
echo {1 if router else 0} > ipv4/ip_forward
for f in bridge/bridge-nf-call-iptables bridge/bridge-nf-call-ip6tables bridge/bridge-nf-call-arptables; do
  [ -e $f ] && echo 0 > $f || true
done
ip -b - <<'EOF'
{chr(10).join(commands)}
EOF
"""
        if nft is not None:
            path = self.workdir / f"{node.name}.nft"
            path.write_text(nft)
            script += f"nft -f {path}\n"
        _sh(["ip", "netns", "exec", node.ns, "sh", "-c", script])

    def _link(self, parent: Node, child: Node) -> str:
        """A veth pair made inside the parent's namespace, its peer created straight in the child's."""
        parent_if = ("c-" if parent.kind == "core" else "l-") + child.name
        _sh(
            [
                "ip",
                "-n",
                parent.ns,
                "link",
                "add",
                parent_if,
                "type",
                "veth",
                "peer",
                "name",
                child.uplink,
                "netns",
                child.ns,
            ]
        )
        return parent_if

    def _after_link(self, parent: Node, child: Node, parent_if: str) -> None:
        if parent.kind == "core":
            cmds = [
                f"addr add {CORE_ADDRESS}/32 dev {parent_if}",
                f"link set {parent_if} up",
                f"route add {child.address}/32 dev {parent_if}",
            ]
        else:
            cmds = [f"link set {parent_if} master lan", f"link set {parent_if} up"]
        # the parent's sysctl defaults (rp_filter 0, no redirects, no IPv6) were set before this link
        _sh(["ip", "-n", parent.ns, "-b", "-"], input="\n".join(cmds) + "\n")

    def _uplink_commands(self, node: Node) -> list[str]:
        parent = self.nodes[node.parent or "core"]
        cmds = ["link set lo up"]
        if parent.kind == "core":
            cmds += [
                f"addr add {node.address}/32 dev {node.uplink}",
                f"link set {node.uplink} up",
                f"route add {CORE_ADDRESS}/32 dev {node.uplink} scope link",
                f"route add {INTERNET} via {CORE_ADDRESS} dev {node.uplink} src {node.address}",
            ]
        else:
            assert parent.lan_net is not None
            cmds += [
                f"addr add {node.address}/{parent.lan_net.prefixlen} dev {node.uplink}",
                f"link set {node.uplink} up",
                f"route add {INTERNET} via {parent.lan_ip} dev {node.uplink}",
            ]
            if not parent.lan_net.subnet_of(CGNAT_RANGE) and self._behind_cgnat(parent):
                cmds.append(f"route add {CGNAT_RANGE} via {parent.lan_ip} dev {node.uplink}")
        return cmds

    def _behind_cgnat(self, node: Node) -> bool:
        while node.kind == "router":
            if node.lan_net is not None and node.lan_net.subnet_of(CGNAT_RANGE):
                return True
            node = self.nodes[node.parent or "core"]
        return False

    def _public_pool_address(self) -> str:
        used = {n.address for n in self.nodes.values() if n.parent in (None, "core")}
        while True:
            self._next_public += 1
            if self._next_public > 254:
                raise LabError("no free public address left")
            addr = str(INTERNET.network_address + self._next_public)
            if addr not in used:
                return addr

    def _lan_address(self, router: Node) -> str:
        assert router.lan_net is not None
        addr = router.lan_net.network_address + router.next_lan_host
        router.next_lan_host += 1
        if addr not in router.lan_net or addr == router.lan_net.broadcast_address:
            raise LabError(f"LAN of {router.name} is full")
        return str(addr)

    def _attach(self, node: Node, parent_name: str | None) -> None:
        parent = self.nodes[parent_name or "core"]
        if parent.kind not in ("core", "router"):
            raise ValueError(f"{parent.name} is a {parent.kind}: only the core or a router can have children")
        node.parent = parent.name
        parent.children.append(node.name)
        if parent.kind == "core":
            if not node.address:
                node.address = self._public_pool_address()
            if ipaddress.ip_address(node.address) not in INTERNET or node.address == CORE_ADDRESS:
                raise ValueError(f"public address {node.address} must be in {INTERNET} (not {CORE_ADDRESS})")
            if any(n.address == node.address and n is not node for n in self.nodes.values() if n.parent == "core"):
                raise ValueError(f"address {node.address} already used")
        elif not node.address:
            node.address = self._lan_address(parent)
        parent_if = self._link(parent, node)
        self._after_link(parent, node, parent_if)

    # ---------------------------------------------------------------- public builder API

    def add_public(self, name: str, address: str | None = None) -> str:
        """A host on the internet, e.g. ``add_public("beacon", "203.0.113.10")``."""
        started = time.monotonic()
        node = self._new_namespace(name, "public", uplink="eth0", address=address or "")
        self._attach(node, None)
        self._setup_namespace(node, router=False, commands=self._uplink_commands(node))
        self._apply_link_delays([name])
        self.timings[f"add {name}"] = time.monotonic() - started
        return name

    def add_router(
        self,
        name: str,
        flavour: str = "port_restricted",
        *,
        hairpin: bool | None = None,
        parent: str | None = None,
        lan: str | None = None,
        address: str | None = None,
    ) -> str:
        """A NAT router: WAN towards ``parent`` (the core by default), LAN bridge ``lan`` on ``lan``
        (default 192.168.N.0/24, the router at .1)."""
        started = time.monotonic()
        flavour, hairpin = normalise_flavour(flavour, hairpin)
        if lan is None:
            lan = f"192.168.{self._next_lan}.0/24"
            self._next_lan += 1
        lan_net = ipaddress.ip_network(lan)
        node = self._new_namespace(
            name,
            "router",
            uplink="wan",
            address=address or "",
            lan_net=lan_net,
            lan_ip=str(lan_net.network_address + 1),
            flavour=flavour,
            hairpin=hairpin,
        )
        self._attach(node, parent)
        commands = self._uplink_commands(node) + [
            "link add lan type bridge",
            f"addr add {node.lan_ip}/{lan_net.prefixlen} dev lan",
            "link set lan up",
        ]
        self._setup_namespace(node, router=True, commands=commands, nft=self._ruleset(node))
        self._apply_link_delays([name])
        self.timings[f"add {name}"] = time.monotonic() - started
        return name

    def add_cgnat(
        self,
        name: str,
        flavour: str = "port_restricted",
        *,
        hairpin: bool = True,
        address: str | None = None,
        lan: str = "100.64.0.0/10",
    ) -> str:
        """A carrier-grade NAT: public WAN, inside 100.64.0.0/10; put home routers behind it with
        ``add_home(..., parent=name)``. Hairpin on by default (RFC 6888 asks CGNATs for it)."""
        return self.add_router(name, flavour, hairpin=hairpin, lan=lan, address=address)

    def add_host(self, name: str, router: str, address: str | None = None) -> str:
        """A host on a router's LAN."""
        started = time.monotonic()
        if self.nodes.get(router) is None or self.nodes[router].kind != "router":
            raise ValueError(f"{router!r} is not a router")
        node = self._new_namespace(name, "host", uplink="eth0", address=address or "")
        self._attach(node, router)
        self._setup_namespace(node, router=False, commands=self._uplink_commands(node))
        self.timings[f"add {name}"] = time.monotonic() - started
        return name

    def add_home(
        self,
        name: str,
        flavour: str = "port_restricted",
        *,
        hosts: int | Sequence[str] = 1,
        hairpin: bool | None = None,
        parent: str | None = None,
        lan: str | None = None,
        address: str | None = None,
    ) -> list[str]:
        """A home router ``name`` with hosts behind it (``name1``, ``name2``... or the names given).
        Returns the host names."""
        self.add_router(name, flavour, hairpin=hairpin, parent=parent, lan=lan, address=address)
        names = [f"{name}{i + 1}" for i in range(hosts)] if isinstance(hosts, int) else list(hosts)
        for host in names:
            self.add_host(host, name)
        return names

    def build_standard(self, delay_ms: float | None = None) -> dict[str, str]:
        """The topology of issue 4, in one call (about a second). Returns node name -> address.

        beacon 203.0.113.10, pub2 203.0.113.20; home A (A1, A2), home B (B1);
        cgnat C (203.0.113.40, hairpin) with homes D (D1) and E (E1) behind it.
        """
        started = time.monotonic()
        if delay_ms is not None:
            self.set_delay(delay_ms)
        self.add_public("beacon", "203.0.113.10")
        self.add_public("pub2", "203.0.113.20")
        self.add_home("A", hosts=2, address="203.0.113.2")
        self.add_home("B", address="203.0.113.3")
        self.add_cgnat("C", address="203.0.113.40")
        self.add_home("D", parent="C")
        self.add_home("E", parent="C")
        self.timings["build_standard"] = time.monotonic() - started
        return {name: node.address for name, node in self.nodes.items() if name != "core"}

    def start_proxy(self, router: str, connect_ports: Sequence[int] = (443,)) -> str:
        """A real HTTP CONNECT proxy (Debian's tinyproxy) in ``router``'s namespace, listening on
        its LAN address (port PROXY_PORT), tunnelling only to ``connect_ports``; returns its URL
        for the hosts behind it (with the proxy_only flavour it is their only way out)."""
        node = self._router(router)
        conf = self.workdir / f"tinyproxy-{router}.conf"
        lines = [
            f"Port {PROXY_PORT}",
            f"Listen {node.lan_ip}",
            "Timeout 60",
            "MaxClients 100",
            f"Allow {node.lan_net}",
            "LogLevel Info",
            *(f"ConnectPort {p}" for p in connect_ports),
        ]
        conf.write_text("\n".join(lines) + "\n")
        proc = self.popen(router, ["tinyproxy", "-d", "-c", str(conf)], name=f"tinyproxy-{router}", infrastructure=True)
        proc.wait_for(r"Accepting connections", timeout=10)
        return f"http://{node.lan_ip}:{PROXY_PORT}"

    def set_flavour(self, router: str, flavour: str, hairpin: bool | None = None) -> None:
        """Switch a router's NAT behaviour now; its conntrack table and learned mappings are flushed."""
        node = self._router(router)
        node.flavour, node.hairpin = normalise_flavour(flavour, hairpin)
        path = self.workdir / f"{node.name}.nft"
        path.write_text(self._ruleset(node))
        self.run(router, ["nft", "-f", str(path)])
        self.flush_conntrack(router)

    def enable_ipv6(self, node: str) -> str:
        """Global IPv6 (2001:db8::/32) for a public host, or for a router and its LAN hosts (no
        NAT66: a stateful firewall, see :func:`router_ruleset`). Returns the node's IPv6 address
        (a router's LAN hosts get 2001:db8:N::2, ::3...; read them with ``address6``)."""
        n = self.nodes[node]
        if n.parent != "core" or n.kind not in ("public", "router"):
            raise ValueError(f"{node}: IPv6 is for public hosts and core-attached routers")
        index = int(ipaddress.ip_address(n.address)) & 0xFF
        n.address6 = f"2001:db8:ffff::{index:x}"
        on = (
            "for f in /proc/sys/net/ipv6/conf/*/disable_ipv6; do echo 0 > $f; done; "
            "for f in /proc/sys/net/ipv6/conf/*/accept_dad /proc/sys/net/ipv6/conf/*/accept_ra "
            "/proc/sys/net/ipv6/conf/*/router_solicitations; do echo 0 > $f; done"
        )
        self.run("core", ["sh", "-c", on + "; echo 1 > /proc/sys/net/ipv6/conf/all/forwarding"])
        core_cmds = [f"route replace {n.address6}/128 dev c-{node}"]
        cmds = [
            f"addr add {n.address6}/128 dev {n.uplink} nodad",
            f"route add 2001:db8:ffff::1/128 dev {n.uplink}",
            f"route add 2001:db8::/32 via 2001:db8:ffff::1 dev {n.uplink}",
        ]
        # the core's address on every link (as for IPv4): NDP answers only for the link's own addresses
        core_cmds.insert(0, f"addr add 2001:db8:ffff::1/128 dev c-{node} nodad")
        if n.kind == "router":
            lan6 = f"2001:db8:{index:x}::"
            cmds.append(f"addr add {lan6}1/64 dev lan nodad")
            core_cmds.append(f"route replace {lan6}/64 via {n.address6} dev c-{node}")
        self.run(
            node, ["sh", "-c", on + ("; echo 1 > /proc/sys/net/ipv6/conf/all/forwarding" if n.kind == "router" else "")]
        )
        _sh(["ip", "-6", "-n", n.ns, "-b", "-"], input="\n".join(cmds) + "\n")
        _sh(["ip", "-6", "-n", self.nodes["core"].ns, "-b", "-"], input="\n".join(core_cmds) + "\n")
        if n.kind == "router":
            path = self.workdir / f"{n.name}.nft"
            path.write_text(self._ruleset(n))
            self.run(node, ["nft", "-f", str(path)])
            for i, host in enumerate(h for h in n.children if self.nodes[h].kind == "host"):
                h = self.nodes[host]
                h.address6 = f"{lan6}{i + 2:x}"
                self.run(host, ["sh", "-c", on])
                _sh(
                    ["ip", "-6", "-n", h.ns, "-b", "-"],
                    input=f"addr add {h.address6}/64 dev eth0 nodad\nroute add 2001:db8::/32 via {lan6}1 dev eth0\n",
                )
        return n.address6

    def address6(self, node: str) -> str:
        return self.nodes[node].address6

    def start_stun(self) -> LabProcess:
        """A STUN Binding responder on the core (203.0.113.1:3478), for miniupnpd (once per lab)."""
        if self._stun is None:
            self._stun = self.popen(
                "core", [sys.executable, str(HERE / "stun.py"), CORE_ADDRESS, "3478"], name="stun", infrastructure=True
            )
            self._stun.wait_for(r"^ready", timeout=10)
        return self._stun

    def enable_portmap(
        self, router: str, *, pcp: bool = True, natpmp: bool = True, upnp: bool = True, allow: bool = True
    ) -> LabProcess:
        """Run miniupnpd (Debian's nftables build) on a router: PCP, NAT-PMP and UPnP-IGD each
        switchable; ``allow=False`` makes it refuse every mapping (NOT_AUTHORIZED)."""
        node = self._router(router)
        if shutil.which("miniupnpd") is None:
            raise LabUnavailable("miniupnpd is not installed (Debian: miniupnpd-nftables)")
        self.start_stun()
        node.portmap = (pcp, natpmp, upnp)
        path = self.workdir / f"{node.name}.nft"
        path.write_text(self._ruleset(node))
        self.run(router, ["nft", "-f", str(path)])
        rule = "allow 1024-65535 0.0.0.0/0 1024-65535" if allow else "deny 0-65535 0.0.0.0/0 0-65535"
        conf = self.workdir / f"{node.name}-miniupnpd.conf"
        conf.write_text(
            f"""ext_ifname=wan
listening_ip=lan
http_port=0
enable_natpmp={"yes" if (pcp or natpmp) else "no"}
enable_upnp={"yes" if upnp else "no"}
ext_perform_stun=yes
ext_stun_host={CORE_ADDRESS}
ext_stun_port=3478
secure_mode=yes
system_uptime=yes
notify_interval=60
clean_ruleset_interval=600
min_lifetime=20
max_lifetime=86400
upnp_table_name=miniupnpd
upnp_nat_table_name=miniupnpd
upnp_forward_chain=miniupnpd
upnp_nat_chain=prerouting_miniupnpd
upnp_nat_postrouting_chain=postrouting_miniupnpd
uuid=3a1e2f00-0000-4000-8000-{abs(hash(node.ns)) % 10**12:012d}
{rule}
"""
        )
        for host in node.children:  # lab hosts have no default route: let SSDP's multicast out
            if self.nodes[host].kind == "host":
                self.run(host, ["ip", "route", "replace", "239.255.255.250/32", "dev", "eth0"])
        # a pid file of its own: another lab (a parallel test run) may run miniupnpd too
        pidfile = self.workdir / f"{node.name}-miniupnpd.pid"
        proc = self.popen(
            router,
            ["miniupnpd", "-d", "-f", str(conf), "-P", str(pidfile)],
            name=f"miniupnpd-{router}",
            infrastructure=True,
        )
        proc.wait_for(r"Listening for NAT-PMP/PCP|HTTP listening", timeout=10, stream="stderr")
        return proc

    def portmap_rules(self, router: str) -> str:
        """miniupnpd's DNAT rules on a router (empty when it holds no mapping)."""
        out = self.run(
            router, ["nft", "list", "chain", "inet", "miniupnpd", "prerouting_miniupnpd"], check=False
        ).stdout
        return "\n".join(line.strip() for line in out.splitlines() if "dnat" in line)

    def flush_conntrack(self, router: str | None = None) -> None:
        """Forget every connection (NAT mapping) of one router, or of all routers."""
        names = [router] if router else [n.name for n in self.nodes.values() if n.kind == "router"]
        for name in names:
            self.run(name, ["conntrack", "-F"], check=False)

    def _router(self, name: str) -> Node:
        node = self.nodes.get(name)
        if node is None or node.kind != "router":
            raise ValueError(f"{name!r} is not a router")
        return node

    def _ruleset(self, node: Node) -> str:
        return router_ruleset(
            flavour=node.flavour,
            hairpin=node.hairpin,
            wan_ip=node.address,
            lan_net=str(node.lan_net),
            portmap=node.portmap,
            ipv6=bool(node.address6),
        )

    # ---------------------------------------------------------------- lookups

    def host(self, node: str) -> Host:
        """A handle on a node (run, popen, python, agent, capture, address)."""
        return Host(self, node)

    def ns(self, node: str) -> str:
        return self.nodes[node].ns

    def address(self, node: str) -> str:
        """The node's own address: public for public hosts and core-attached routers, the LAN
        address for hosts, the CGNAT-inside address for routers behind a CGNAT."""
        return self.nodes[node].address

    def public_address(self, node: str) -> str:
        """The internet address the node's packets leave with (its outermost router's WAN)."""
        current = self.nodes[node]
        while current.parent not in (None, "core"):
            current = self.nodes[current.parent]
        return current.address

    def router_of(self, host: str) -> str | None:
        parent = self.nodes[host].parent
        return None if parent in (None, "core") else parent

    def flavour(self, router: str) -> tuple[str, bool]:
        node = self._router(router)
        return node.flavour, node.hairpin

    # ---------------------------------------------------------------- running things

    def _argv(self, node: str, argv: Sequence[str]) -> list[str]:
        if self.closed:
            raise LabError("lab is closed")
        return ["ip", "netns", "exec", self.nodes[node].ns, *map(str, argv)]

    def run(
        self,
        node: str,
        argv: Sequence[str],
        *,
        timeout: float = 30,
        check: bool = True,
        input: str | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess:
        """Run a command to completion inside a node; output captured as text."""
        result = subprocess.run(
            self._argv(node, argv), input=input, capture_output=True, text=True, timeout=timeout, env=lab_env(env)
        )
        if check and result.returncode != 0:
            raise LabError(
                f"[{node}] {' '.join(map(str, argv))} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
            )
        return result

    def popen(
        self,
        node: str,
        argv: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        cwd: str | Path | None = None,
        stdin: Any = subprocess.DEVNULL,
        stdout: Any = None,
        stderr: Any = None,
        text: bool = True,
        name: str | None = None,
        infrastructure: bool = False,
    ) -> LabProcess:
        """Start a process inside a node. By default stdout and stderr go to files in the lab's
        workdir (read them with ``.stdout``/``.stderr``/``.wait_for``); pass ``subprocess.PIPE`` to
        get pipes instead. The repository is on PYTHONPATH; output is unbuffered. Killed at teardown."""
        self._log_seq += 1
        label = name or f"{node}-{self._log_seq}"
        out_path = err_path = None
        files = []
        if stdout is None:
            out_path = self.workdir / f"{label}.out"
            stdout = open(out_path, "w")  # noqa: SIM115 - the process writes to it; closed with `files`
            files.append(stdout)
        if stderr is None:
            err_path = self.workdir / f"{label}.err"
            stderr = open(err_path, "w")  # noqa: SIM115 - the process writes to it; closed with `files`
            files.append(stderr)
        try:
            popen = subprocess.Popen(
                self._argv(node, argv),
                env=lab_env(env),
                cwd=str(cwd) if cwd else None,
                stdin=stdin,
                stdout=stdout,
                stderr=stderr,
                text=text,
                start_new_session=True,
            )
        finally:
            for f in files:
                f.close()
        process = LabProcess(popen, node, argv, out_path, err_path)
        # infrastructure (the delayer) lives until close(); the rest is the tests' business
        (self._infrastructure if infrastructure else self.processes).append(process)
        return process

    def python(self, node: str, code: str, *args: str, **kwargs: Any) -> LabProcess:
        """``popen(node, [sys.executable, "-c", code, *args])``."""
        return self.popen(node, [sys.executable, "-c", code, *args], **kwargs)

    def agent(self, node: str) -> UdpAgent:
        """A UDP agent (agent.py) in ``node``: open sockets, send, receive, echo, measure RTT."""
        agent = UdpAgent(self, node)
        self._agents.append(agent)
        return agent

    def capture(self, node: str, iface: str | None = None, bpf: str = "") -> Capture:
        """Start tcpdump in ``node`` on ``iface`` (default: its uplink; for ``core`` give
        ``c-<node>``). ``bpf`` is a tcpdump filter, e.g. ``"udp"``. Stop it with ``.stop()``,
        which returns the parsed packets."""
        n = self.nodes[node]
        if iface is None:
            if n.kind == "core":
                raise ValueError("give the core's interface: c-<node>")
            iface = n.uplink
        self._log_seq += 1
        cap = Capture(self, node, iface, bpf, self.workdir / f"capture-{self._log_seq}-{node}-{iface}.pcap")
        self.captures.append(cap)
        return cap

    def conntrack(self, node: str) -> str:
        return self.run(node, ["conntrack", "-L"], check=False).stdout

    def ruleset(self, node: str) -> str:
        return self.run(node, ["nft", "list", "ruleset"]).stdout

    def kill_processes(self, since: int = 0) -> None:
        """Stop the processes started by this lab (from index ``since`` of ``self.processes``)."""
        victims = self.processes[since:]
        for agent in [a for a in self._agents if a.process in victims]:
            agent.close()
            self._agents.remove(agent)
        for cap in [c for c in self.captures if c.process in victims]:
            cap.stop()
        for p in victims:
            p.terminate()
        deadline = time.monotonic() + 1.0
        for p in victims:
            try:
                p.popen.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
        for p in victims:
            for stream in (p.popen.stdin, p.popen.stdout, p.popen.stderr):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()

    # ---------------------------------------------------------------- delay

    def delay_backend(self) -> str:
        """``"netem"`` where the kernel has sch_netem, else ``"nfqueue"`` (userspace delayer)."""
        if self._delay_backend is None:
            probe = self.run("core", ["tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"], check=False)
            if probe.returncode == 0:
                self.run("core", ["tc", "qdisc", "del", "dev", "lo", "root"], check=False)
                self._delay_backend = "netem"
            else:
                self._delay_backend = "nfqueue"
        if self._delay_backend not in ("netem", "nfqueue"):
            raise LabError(f"unknown delay backend {self._delay_backend!r} (netem or nfqueue)")
        return self._delay_backend

    def set_delay(self, delay_ms: float, node: str | None = None) -> None:
        """One-way delay of internet links, in ms (0 = none). ``node=None``: every link between the
        core and a core-attached node (now and later); else only that node's link. A packet between
        two internet nodes pays both links: RTT = 2 * (delay(a) + delay(b))."""
        if node is None:
            self._default_delay = float(delay_ms)
            self._link_delay.clear()
            targets = [n.name for n in self.nodes.values() if n.parent == "core"]
        else:
            if self.nodes[node].parent != "core":
                raise ValueError(f"{node} is not attached to the core")
            self._link_delay[node] = float(delay_ms)
            targets = [node]
        self._apply_link_delays(targets)

    def link_delay(self, node: str) -> float:
        return self._link_delay.get(node, self._default_delay)

    def _apply_link_delays(self, nodes: Sequence[str]) -> None:
        """Put the configured delay in force on these nodes' core links; returns once it is."""
        nodes = [n for n in nodes if self.nodes[n].parent == "core"]
        if self._delayer is None and not self._netem_links and not any(self.link_delay(n) for n in nodes):
            return  # no delay anywhere: nothing to set up, nothing to undo
        if self.delay_backend() == "netem":
            for node in nodes:
                ms = self.link_delay(node)
                for where, dev in self._core_link_ends(node):
                    if ms > 0:
                        self.run(
                            where,
                            [
                                "tc",
                                "qdisc",
                                "replace",
                                "dev",
                                dev,
                                "root",
                                "netem",
                                "delay",
                                f"{ms}ms",
                                "limit",
                                "100000",
                            ],
                        )
                    else:
                        self.run(where, ["tc", "qdisc", "del", "dev", dev, "root"], check=False)
                (self._netem_links.add if ms > 0 else self._netem_links.discard)(node)
            return
        delayer = self._start_delayer()
        assert delayer.popen.stdin is not None
        for node in nodes:
            delayer.popen.stdin.write(f"c-{node} {self.link_delay(node)}\n")
            self._delayer_commands += 1
        delayer.popen.stdin.flush()
        # wait for the acknowledgements: the delay is in force when set_delay returns
        deadline = time.monotonic() + 10
        while delayer.stdout.count("OK\n") < self._delayer_commands:
            if time.monotonic() > deadline or not delayer.running():
                raise LabError(f"the delayer did not acknowledge its settings:\n{delayer.stdout}\n{delayer.stderr}")
            time.sleep(0.002)

    def _core_link_ends(self, node: str) -> tuple[tuple[str, str], tuple[str, str]]:
        """(namespace, interface) at both ends of a core-attached node's link: its qdiscs shape it."""
        return ("core", f"c-{node}"), (node, self.nodes[node].uplink)

    def set_rate(self, node: str, mbit: float, queue_ms: float = 80.0) -> None:
        """Both directions of a core-attached node's link limited to ``mbit`` Mbit/s (tbf), with a
        drop-tail queue of ``queue_ms`` at that rate: the bottleneck of a home line (0: no limit)."""
        if self.nodes[node].parent != "core":
            raise ValueError(f"{node} is not attached to the core")
        if node in self._netem_links:
            raise LabError(f"{node}: a rate and a netem delay on one link are not supported")
        if mbit <= 0:
            for where, dev in self._core_link_ends(node):
                self.run(where, ["tc", "qdisc", "del", "dev", dev, "root"], check=False)
            return
        rate = mbit * 1e6 / 8  # bytes per second
        limit = max(int(rate * queue_ms / 1000), 65536)
        burst = max(int(rate / 250), 16384)  # a 4 ms bucket: the kernel's timer cannot refill finer
        for where, dev in self._core_link_ends(node):
            self.run(
                where,
                ["tc", "qdisc", "replace", "dev", dev, "root", "tbf", "rate", f"{mbit:g}mbit"]
                + ["burst", str(burst), "limit", str(limit)],
            )

    def _start_delayer(self) -> LabProcess:
        if self._delayer is not None:
            if not self._delayer.running():
                raise LabError(f"the delayer died:\n{self._delayer.stderr}")
            return self._delayer
        delayer = self.popen(
            "core",
            [sys.executable, str(HERE / "delayer.py"), "0"],
            stdin=subprocess.PIPE,
            name="delayer",
            infrastructure=True,
        )
        delayer.wait_for(r"^READY$", timeout=10)
        iptables = next(t for t in ("iptables-legacy", "iptables-nft", "iptables") if shutil.which(t))
        self.run(
            "core", [iptables, "-t", "mangle", "-A", "FORWARD", "-j", "NFQUEUE", "--queue-num", "0", "--queue-bypass"]
        )
        self._delayer = delayer
        self._delayer_commands = 0
        return delayer

    # ---------------------------------------------------------------- teardown

    def close(self) -> None:
        """Stop captures and processes, kill whatever is left in each namespace, delete them all."""
        if self.closed:
            return
        self.closed = True
        started = time.monotonic()
        try:
            self.kill_processes()
            for p in self._infrastructure:
                p.kill()
        finally:
            for ns in reversed(self._namespaces):
                _kill_namespace(ns)
            if self._own_workdir and not os.environ.get("DPN_NATLAB_KEEP"):
                shutil.rmtree(self.workdir, ignore_errors=True)
        self.timings["close"] = time.monotonic() - started

    def report(self, since: int = 0) -> str:
        """Processes (from index ``since``) and their last output, for a failed test's log."""
        parts = []
        for p in self.processes[since:]:
            parts.append(p.describe())
            for label, text in (("stdout", p.stdout), ("stderr", p.stderr)):
                if text.strip():
                    parts.append(
                        f"  --- {label} (last 1500 chars)\n"
                        + "\n".join("  " + line for line in text[-1500:].splitlines())
                    )
        return "\n".join(parts)

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
