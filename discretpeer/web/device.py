"""The device side of the browser shell: signalling over a WebSocket to the beacon, WebRTC with aiortc.

Why a WebSocket and not new frames on the device's QUIC beacon connection: the browser can only speak
WebSocket, so the beacon needs that signalling room anyway; letting the device join the very same room
keeps one forwarding path in the beacon (``beacon/web_signal.py``), no change to the QUIC wire format or
to the beacon's QUIC server, and nothing in it is trusted - pairing is a PAKE and every session is bound
to both identities by signatures over its DTLS fingerprints.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import ssl
import time
from collections.abc import Callable, Sequence
from typing import Any

import websockets
from aiortc import RTCConfiguration, RTCDataChannel, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.sdp import candidate_from_sdp

from discretpeer.identity import Identity
from discretpeer.tasks import TaskSet, wait_for

from ._aioice import retransmit_on_incoming_check
from .binding import BindingError, binding_message, only_sha256, sdp_fingerprint, verify_binding
from .browsers import BrowserStore, tokens_for
from .pairing import DevicePairing, PairedBrowser, PairingError, generate_code, pairing_token
from .shell import PtySession

__all__ = ["WebDevice"]

log = logging.getLogger("discretpeer.web")

MAX_SDP = 16384
MAX_PEER_CONNECTIONS = 8
MAX_SHELLS_PER_CONNECTION = 4
MAX_CANDIDATES = 32  # trickled by one browser session
BIND_TIMEOUT = 15.0  # a connection that has not proven its browser by then is closed
HIGH_WATER = 1 << 20  # bytes queued on a data channel before the PTY stops being read
LOW_WATER = 1 << 18


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class _Session:
    """One RTCPeerConnection with one paired browser."""

    def __init__(self, device: WebDevice, browser: PairedBrowser, token: str, sid: str) -> None:
        self.device = device
        self.browser = browser
        self.token = token
        self.sid = sid
        self.pc: RTCPeerConnection | None = None
        self.browser_fp = ""
        self.device_fp = ""
        self.shells: list[PtySession] = []
        self.bound = False
        self.created = time.monotonic()
        self.described = False  # the offer is set: trickled candidates go straight to the ICE agent
        self.early_candidates: list[str | None] = []  # trickled before that (None = end of candidates)
        self.candidates = 0

    def _mark(self, what: str) -> None:
        log.debug("web session %s: %s after %.0f ms", self.sid[:6], what, (time.monotonic() - self.created) * 1000)

    async def answer(self, offer_sdp: str, ice_servers: list[RTCIceServer], *, direct: bool = False) -> str:
        self.browser_fp = sdp_fingerprint(offer_sdp)
        if direct:
            # the browser's direct attempt (its relay comes in a second offer if this one fails): a
            # TURN allocation here would cost two round trips to the TURN server before the answer
            # exists, and a relay pair could win over the direct one this attempt is for
            ice_servers = [server for server in ice_servers if not server.username]
        pc = self.pc = RTCPeerConnection(RTCConfiguration(iceServers=ice_servers))
        pc.on("datachannel", self._channel)
        pc.on("connectionstatechange", self._state)
        pc.on("iceconnectionstatechange", lambda: self._mark(f"ice {pc.iceConnectionState}"))
        # Chromium hides its host addresses behind mDNS names (xxx.local); aioice resolves each one
        # with a 1 s timeout, one after the other, before the answer exists - a second per offer
        # across NATs, where they never resolve. Without them a LAN browser is still reached: its
        # checks reach our host candidates and come back as peer-reflexive candidates.
        offer_sdp = "\r\n".join(
            line for line in offer_sdp.split("\r\n") if not (line.startswith("a=candidate:") and ".local " in line)
        )
        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
        retransmit_on_incoming_check(pc)
        self.described = True
        for early in self.early_candidates:
            await self.add_candidate(early)
        self.early_candidates.clear()
        self._mark("offer set")
        await pc.setLocalDescription(await pc.createAnswer())
        self._mark("answer made (candidates gathered)")
        sdp = only_sha256(pc.localDescription.sdp)
        self.device_fp = sdp_fingerprint(sdp)
        asyncio.get_running_loop().call_later(BIND_TIMEOUT, self._bind_deadline)
        return sdp

    async def add_candidate(self, line: str | None) -> None:
        """One trickled browser candidate (``a=candidate`` value without the prefix), or None at the end.

        The browser sends its offer before its server-reflexive candidate exists (one round trip to
        STUN), so the offer and the device's own gathering overlap with the browser's."""
        if not self.described:
            self.early_candidates.append(line)
            return
        if self.pc is None:
            return
        if line is None:
            await self.pc.addIceCandidate(None)
            return
        if ".local " in line:  # mDNS host names: see answer()
            return
        line = line.removeprefix("a=").removeprefix("candidate:")
        candidate = candidate_from_sdp(line)
        candidate.sdpMLineIndex = 0
        await self.pc.addIceCandidate(candidate)

    def _bind_deadline(self) -> None:
        if not self.bound:
            # out of the table at once, with the count (close() finishes the rest in a task)
            self.device.sessions.pop(self.sid, None)
            self.device.refused["bind_timeout"] += 1
            asyncio.ensure_future(self.close())

    async def _state(self) -> None:
        self._mark(f"pc {self.pc.connectionState if self.pc else 'gone'}")
        if self.pc is not None and self.pc.connectionState in ("failed", "closed"):
            await self.close()

    async def close(self) -> None:
        for shell in self.shells:
            shell.close()
        self.device.sessions.pop(self.sid, None)
        if self.pc is not None:
            pc, self.pc = self.pc, None
            await pc.close()

    def _channel(self, channel: RTCDataChannel) -> None:
        if len(self.shells) >= MAX_SHELLS_PER_CONNECTION or channel.label != "shell":
            channel.close()
            return
        state: dict[str, Any] = {"shell": None}
        self._mark("data channel")

        def refuse(reason: str, counter: str) -> None:
            self.device.refused[counter] += 1
            log.info("web shell refused: %s", reason)
            with contextlib.suppress(Exception):
                channel.send(json.dumps({"error": reason}))
            channel.close()

        def on_message(message: str | bytes) -> None:
            shell: PtySession | None = state["shell"]
            if shell is None:
                if state.get("refused"):
                    return
                try:
                    hello = json.loads(message) if isinstance(message, str) and len(message) < 4096 else None
                    if not isinstance(hello, dict):
                        raise BindingError("the first message must be the binding proof")
                    public_key = base64.b64decode(str(hello.get("pub", "")), validate=True)
                    signature = base64.b64decode(str(hello.get("sig", "")), validate=True)
                    if public_key != self.browser.public_key:
                        raise BindingError("this browser is not paired with this device")
                    verify_binding(public_key, signature, "browser", self.browser_fp, self.device_fp)
                except (BindingError, ValueError) as exc:
                    state["refused"] = True
                    refuse(str(exc), "binding")
                    return
                self.bound = True
                self._mark("browser proof checked")
                sig = self.device.identity.sign(binding_message("device", self.browser_fp, self.device_fp))
                channel.send(json.dumps({"pub": _b64(self.device.identity.public_key), "sig": _b64(sig)}))
                cols, rows = _size(hello.get("cols"), hello.get("rows"))
                shell = PtySession(self.device.command, lambda data: _out(data), _exit, cols=cols, rows=rows)
                state["shell"] = shell
                self.shells.append(shell)
                shell.start()
                return
            if isinstance(message, bytes):
                if not shell.write(message):
                    with contextlib.suppress(Exception):
                        channel.send(json.dumps({"warning": "input dropped: the shell is not reading"}))
                return
            with contextlib.suppress(ValueError):
                control = json.loads(message) if len(message) < 4096 else None
                if isinstance(control, dict) and "resize" in control:
                    shell.resize(*_size(*(list(control["resize"]) + [None, None])[:2]))

        def _out(data: bytes) -> None:
            if channel.readyState != "open":
                return
            channel.send(data)
            if channel.bufferedAmount > HIGH_WATER and state["shell"] is not None:
                state["shell"].pause_output()  # the browser is not reading: stop reading the PTY

        def _exit(code: int) -> None:
            with contextlib.suppress(Exception):
                if channel.readyState == "open":
                    channel.send(json.dumps({"exit": code}))
                    channel.close()

        def on_low() -> None:
            if state["shell"] is not None:
                state["shell"].resume_output()

        def on_close() -> None:
            if state["shell"] is not None:
                state["shell"].close()

        channel.bufferedAmountLowThreshold = LOW_WATER
        channel.on("message", on_message)
        channel.on("bufferedamountlow", on_low)
        channel.on("close", on_close)


def _size(cols: Any, rows: Any) -> tuple[int, int]:
    c = cols if isinstance(cols, int) and 0 < cols <= 1000 else 80
    r = rows if isinstance(rows, int) and 0 < rows <= 1000 else 24
    return c, r


class WebDevice:
    """Keep a signalling connection to the beacon's web service; answer paired browsers.

    ``url`` is the beacon's ``ws://``/``wss://.../ws``. ``command`` runs on each shell's PTY."""

    def __init__(
        self,
        url: str,
        identity: Identity,
        store: BrowserStore,
        *,
        name: str,
        command: Sequence[str],
        ssl_context: ssl.SSLContext | None = None,
        allowed: Callable[[], set[bytes] | None] | None = None,
        on_paired: Callable[[PairedBrowser], None] | None = None,
    ) -> None:
        """``allowed``: called at each reload (SIGHUP, a new pairing), the public keys that may open a
        shell (the config's allow list); None (or no callable): every browser in ``store``.
        ``on_paired``: called with a new browser before it is saved in ``store`` (the CLI puts it
        in the config's [peers] and allow there)."""
        self.url = url
        self.allowed = allowed
        self.on_paired = on_paired
        self.allowed_keys: set[bytes] | None = None if allowed is None else set()  # fail closed
        self.identity = identity
        self.store = store
        self.name = name
        self.command = list(command)
        self.ssl_context = ssl_context
        self.browsers: dict[str, PairedBrowser] = {}  # token -> browser
        self.pairings: dict[str, DevicePairing] = {}  # token -> pending invite
        self.sessions: dict[str, _Session] = {}
        self.refused: dict[str, int] = {}
        self.paired = asyncio.Event()
        self.connected = asyncio.Event()
        self._ws: Any = None
        self._store_mtime = -1.0
        self._turn: asyncio.Future[dict[str, Any]] | None = None
        self._turn_lock = asyncio.Lock()
        self._ice_cache: tuple[float, list[RTCIceServer]] | None = None
        self._tasks = TaskSet()
        self._spawn = self._tasks.spawn
        self._stun: list[RTCIceServer] | None = None  # the beacon's STUN servers, told with "present"

        class _Counter(dict[str, int]):
            def __missing__(self, key: str) -> int:
                return 0

        self.refused = _Counter()

    def invite(self) -> str:
        """A fresh one-time pairing code (valid while this device runs, for one attempt)."""
        code = generate_code()
        from .pairing import parse_code

        room, _ = parse_code(code)
        self.pairings[pairing_token(room)] = DevicePairing(code, self.identity.public_key, self.name)
        self._relisten()
        return code

    def reload(self) -> None:
        """Re-read the paired browsers (also done when the file changes); drop sessions of removed ones."""
        self._store_mtime = self.store.mtime()
        now = time.time()
        try:
            loaded = self.store.load()
        except (ValueError, KeyError, TypeError) as exc:  # a hand-edited file gone wrong: keep serving
            log.error(
                "%s: not reloaded, keeping the %d paired browsers (%s)",
                self.store.path,
                len({b.public_key for b in self.browsers.values()}),
                exc,
            )
            self._relisten()
            return
        if self.allowed is not None:
            try:
                self.allowed_keys = self.allowed()
            except Exception as exc:  # noqa: BLE001 - a config gone wrong: keep the current allow list
                log.error("allow list not reloaded, keeping the current one (%s)", exc)
        self.browsers = {t: b for b in loaded for t in tokens_for(b, now)}
        keys = {b.public_key for b in self.browsers.values()}
        if self.allowed_keys is not None:
            keys &= self.allowed_keys
        for session in list(self.sessions.values()):
            if session.browser.public_key not in keys:
                asyncio.ensure_future(session.close())
        self._relisten()

    def _relisten(self) -> None:
        if self._ws is not None:
            tokens = list(self.browsers) + list(self.pairings)
            self._spawn(self._send({"t": "listen", "tokens": tokens}))

    async def _send(self, message: dict[str, Any]) -> None:
        if self._ws is not None:
            with contextlib.suppress(websockets.ConnectionClosed):
                await self._ws.send(json.dumps({"v": 1, **message}))

    async def run(self) -> None:
        """Connect, and reconnect with back-off, until cancelled."""
        delay = 0.5
        while True:
            try:
                async with websockets.connect(
                    self.url, ssl=self.ssl_context, max_size=65536, compression=None, open_timeout=10
                ) as ws:
                    self._ws = ws
                    delay = 0.5
                    self.reload()
                    self.connected.set()
                    watcher = asyncio.ensure_future(self._watch_store())
                    try:
                        async for raw in ws:
                            self._on_beacon(raw)
                    finally:
                        watcher.cancel()
            except (OSError, websockets.WebSocketException, TimeoutError) as exc:
                log.info("web signalling: %s; retrying in %.1f s", exc, delay)
            finally:
                self._ws = None
                self.connected.clear()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)

    async def _watch_store(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            if self.store.mtime() != self._store_mtime:
                self.reload()

    async def stop(self) -> None:
        for session in list(self.sessions.values()):
            await session.close()

    def _on_beacon(self, raw: str | bytes) -> None:
        try:
            message = json.loads(raw)
        except ValueError:
            return
        if not isinstance(message, dict):
            return
        kind = message.get("t")
        if kind == "turn":
            if self._turn is not None and not self._turn.done():
                self._turn.set_result(message)
            return
        if kind == "present":
            # a paired browser arrived: fetch the STUN/TURN servers now, its offer follows in ~1 RTT
            token = str(message.get("token"))
            urls = message.get("urls")
            if isinstance(urls, list) and len(urls) <= 8:
                self._stun = [RTCIceServer(urls=[u for u in urls if isinstance(u, str)])] if urls else []
            if token in self.browsers and isinstance(message.get("count"), int) and message["count"] >= 2:
                self._spawn(self._ice_servers(token))
            return
        if kind == "error":
            log.warning("web signalling refused: %s", message.get("reason"))
            return
        if kind != "msg" or not isinstance(message.get("data"), dict):
            return
        token, data = str(message.get("token")), message["data"]
        if token in self.pairings:
            self._pairing(token, data)
        elif token in self.browsers:
            self._spawn(self._browser_message(token, data))

    def _pairing(self, token: str, data: dict[str, Any]) -> None:
        pairing = self.pairings[token]
        try:
            reply, browser = pairing.receive(data)
        except PairingError as exc:
            self.refused["pairing"] += 1
            log.warning("web pairing failed: %s (the code is no longer valid)", exc)
            del self.pairings[token]
            self._spawn(self._send({"t": "send", "token": token, "data": {"k": "refused", "reason": str(exc)}}))
            self._relisten()
            return
        if reply is not None:
            self._spawn(self._send({"t": "send", "token": token, "data": reply}))
        if browser is not None:
            if self.on_paired is not None:
                self.on_paired(browser)
            self.store.add(browser)
            del self.pairings[token]
            log.info("web pairing: browser %r paired", browser.name)
            self.reload()
            self.paired.set()

    async def _browser_message(self, token: str, data: dict[str, Any]) -> None:
        browser = self.browsers[token]
        sid = data.get("id")
        if data.get("k") == "candidate":
            session = self.sessions.get(sid) if isinstance(sid, str) else None
            line = data.get("c")
            if session is None or session.browser.public_key != browser.public_key:
                return  # only the browser that made the session may add to it
            malformed = line is not None and not (isinstance(line, str) and len(line) < 512)
            if malformed or session.candidates >= MAX_CANDIDATES:
                self.refused["bad_signal"] += 1
                return
            session.candidates += 1
            try:
                await session.add_candidate(line)
            except Exception as exc:  # noqa: BLE001 - aiortc raises many kinds on a bad candidate
                self.refused["bad_signal"] += 1
                log.debug("web session %s: candidate refused: %s", str(sid)[:6], exc)
            return
        if data.get("k") != "offer" or not isinstance(sid, str) or not 0 < len(sid) <= 64:
            self.refused["bad_signal"] += 1
            return
        sdp = data.get("sdp")
        reply: dict[str, Any]
        if self.allowed_keys is not None and browser.public_key not in self.allowed_keys:
            # still listened for (its tokens are secret to it and us): a clear refusal, not a timeout
            self.refused["not_allowed"] += 1
            reply = {"k": "error", "id": sid, "reason": "this browser is not in the device's allow list"}
        elif not isinstance(sdp, str) or len(sdp) > MAX_SDP:
            self.refused["bad_signal"] += 1
            reply = {"k": "error", "id": sid, "reason": f"offer SDP missing or larger than {MAX_SDP} bytes"}
        elif sid in self.sessions or len(self.sessions) >= MAX_PEER_CONNECTIONS:
            self.refused["busy"] += 1
            reply = {"k": "error", "id": sid, "reason": "too many browser sessions on this device"}
        else:
            session = _Session(self, browser, token, sid)
            self.sessions[sid] = session
            try:
                direct = data.get("relay") is not True  # the browser's first, direct-only attempt
                if direct and self._stun is not None and self._ice_cache is None:
                    servers = self._stun  # a direct offer needs no TURN: no round trip for credentials
                else:
                    servers = await self._ice_servers(token)
                answer = await session.answer(sdp, servers, direct=direct)
                reply = {"k": "answer", "id": sid, "sdp": answer, "name": self.name}
            except Exception as exc:  # noqa: BLE001 - aiortc raises many kinds on a bad SDP
                self.refused["bad_signal"] += 1
                await session.close()
                reply = {"k": "error", "id": sid, "reason": f"offer refused: {type(exc).__name__}: {exc}"[:200]}
        await self._send({"t": "send", "token": token, "data": reply})

    async def _ice_servers(self, token: str) -> list[RTCIceServer]:
        """STUN/TURN servers from the beacon, kept until a minute before the credentials expire
        (one round trip less per connection; one request at a time)."""
        async with self._turn_lock:
            if self._ice_cache is not None and time.time() < self._ice_cache[0]:
                return self._ice_cache[1]
            loop = asyncio.get_running_loop()
            self._turn = loop.create_future()
            await self._send({"t": "turn", "token": token})
            try:
                creds = await wait_for(self._turn, 2.0)
            except TimeoutError:
                return []
            servers = self._servers(creds)
            ttl = creds.get("ttl")
            if isinstance(ttl, int) and ttl > 120:
                self._ice_cache = (time.time() + ttl - 60, servers)
            return servers

    @staticmethod
    def _servers(creds: dict[str, Any]) -> list[RTCIceServer]:
        servers = [RTCIceServer(urls=u) for u in creds.get("urls", []) if isinstance(u, str)]
        if creds.get("turn_urls") and creds.get("username"):
            servers.append(
                RTCIceServer(
                    urls=[u for u in creds["turn_urls"] if isinstance(u, str)],
                    username=str(creds["username"]),
                    credential=str(creds["credential"]),
                )
            )
        return servers
