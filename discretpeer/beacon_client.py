"""A peer's connection to one beacon, from the peer's one UDP socket (or over TLS/TCP).

Announces the tokens and local candidates, follows token changes, passes introductions up,
pings to notice a lost beacon, and reconnects forever with capped exponential backoff and full
jitter, re-announcing after each reconnect.

Dialling (the pinned QUIC-vs-TLS/TCP race) is :mod:`discretpeer.beacon_dial`. While on TCP,
UDP is tried again in the background and the client moves back as soon as it works. Over TCP,
relay datagrams travel on the TLS stream: the endpoint hands datagrams for the beacon's address
to it (:attr:`Endpoint.stream_links`).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from discretpeer._aioquic import smoothed_rtt
from discretpeer.addresses import Addr
from discretpeer.beacon_dial import HANDSHAKE_TIMEOUT, BeaconDialer, BeaconLink, PinMismatch, describe_failure
from discretpeer.beacon_tcp import TcpChannel, TlsPinMismatch
from discretpeer.behaviour_probe import classify
from discretpeer.config import BeaconSpec
from discretpeer.endpoint import Endpoint, EndpointProtocol
from discretpeer.logs import get_logger
from discretpeer.proto.wire import (
    MAPPING_DEPENDENT,
    MAPPING_UNKNOWN,
    MAX_TOKENS_PER_FRAME,
    Address,
    Announce,
    Error,
    ErrorCode,
    Introduction,
    Message,
    Ping,
    Pong,
    RelayEnd,
    RelayGrant,
    RelayRequest,
    WireError,
    encode,
    token_of_full_message,
)
from discretpeer.tasks import cancel_and_wait, wait_for
from discretpeer.traversal import mapping_varies

log = get_logger("discretpeer.beacon_client")

# a Ping every 6-8 s (jittered: 10,000 peers that connected together do not ping together):
# keeps NAT mappings (many home routers drop idle UDP ones after 30 s) and bounds how long a
# crashed beacon goes unnoticed: its restarted process answers the next Ping with a stateless reset
KEEPALIVE_INTERVAL = 8.0
KEEPALIVE_JITTER = 0.25  # each interval is KEEPALIVE_INTERVAL x uniform(1 - jitter, 1)
PONG_TIMEOUT = 1.0  # a Pong (or any frame) later than max(this, 4 RTT) counts as missed
MISSED_PONGS = 3  # consecutive misses (Pings then go every PONG_TIMEOUT) = the beacon is lost
BACKOFF_INITIAL = 0.5
BACKOFF_CAP = 30.0
STABLE_AFTER = 10.0  # a connection that lived this long resets the backoff
TOKEN_FULL_RETRY = 10.0  # seconds (± jitter) before announcing a token the beacon refused as full again
UDP_RETRY_INTERVAL = 15.0  # while on TCP: how often UDP is tried again
# the behaviour port is asked before the first Announce (introductions then carry what our NAT
# does), for 4 handshake RTTs within these bounds: a beacon whose firewall drops that port costs
# one such wait, and is not waited for again for BEHAVIOUR_SILENT_SKIP seconds
BEHAVIOUR_WAIT = (0.15, 0.6)
BEHAVIOUR_SILENT_SKIP = 600.0


class BeaconLost(ConnectionError):
    """The beacon stopped answering Pings, or reset the connection."""


@dataclass
class BeaconStatus:
    """What a user checks when nothing connects (exposed by ``Peer.beacon_status``)."""

    beacon: str
    state: str = "idle"  # idle, connecting, connected, backoff, closed
    address: Addr | None = None
    transport: str | None = None  # udp, tcp, "tcp via proxy" (None until connected)
    udp_works: bool | None = None  # None: not known yet; False: QUIC over UDP failed, TCP in use
    udp_error: str | None = None  # why UDP failed, when it did
    observed: Address | None = None
    rtt: float | None = None
    last_error: str | None = None
    connects: int = 0
    failures: int = 0
    introductions: int = 0
    pin_mismatches: int = 0
    tokens_full: int = 0  # TOKEN_FULL refusals: a token of ours got no slot, or lost it
    full_refusal: str | None = None  # the last of them, in words
    # from the beacon's behaviour port: our address as its second port saw it, and what that says
    # of our NAT (wire.MAPPING_*), with the time it took
    second_observed: Addr | None = None
    mapping: int | None = None
    behaviour_ms: float | None = None
    behaviour_port: int | None = None  # the beacon's second port, from its Welcome
    connect_ms: float | None = None  # from starting to connect to the Welcome, last connection
    history: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        self.last_error = text
        self.history.append(text)
        del self.history[:-10]


class BeaconClient:
    def __init__(
        self,
        spec: BeaconSpec,
        endpoint: Endpoint,
        instance: bytes,
        *,
        on_introduction: Callable[[BeaconClient, Introduction], None],
        get_candidates: Callable[[], list[Address]],
        on_relay_message: Callable[[BeaconClient, Message], None] | None = None,
        on_disconnect: Callable[[BeaconClient, Addr], None] | None = None,
        on_token_full: Callable[[BeaconClient, bytes, str], None] | None = None,
        rng: random.Random | None = None,
        observe_behaviour: Callable[[Addr, float], Awaitable[Addr | None]] | None = None,
    ) -> None:
        self.spec = spec
        self.status = BeaconStatus(beacon=spec.hostname)
        self.dialer = BeaconDialer(spec, endpoint, instance, self.status)
        self._endpoint = endpoint
        self._instance = instance
        self._on_introduction = on_introduction
        self._get_candidates = get_candidates
        self._on_relay_message = on_relay_message
        self._on_disconnect = on_disconnect
        self._on_token_full = on_token_full
        self._retry_full: asyncio.TimerHandle | None = None
        self._observe_behaviour = observe_behaviour
        self._behaviour_silent_until = 0.0  # monotonic: its behaviour port did not answer
        self.mapping: int | None = None  # wire.MAPPING_*, learned from the beacon's behaviour port
        self._rng = rng or random.Random()
        self._tokens: set[bytes] = set()
        self._announced: set[bytes] = set()
        self._protocol: EndpointProtocol | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._channel: TcpChannel | None = None
        self._upgrade: BeaconLink | None = None  # a QUIC link found while on TCP: adopted at once
        self._udp_retry: asyncio.Task[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self._pings: dict[int, float] = {}
        self._heard = asyncio.Event()  # set by every frame from the beacon
        self._check = asyncio.Event()  # check_now(): ping at once
        self._last_ping = 0.0
        self._closing = False
        self.max_tokens = MAX_TOKENS_PER_FRAME

    # --- public -------------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"beacon {self.spec}")

    async def close(self) -> None:
        self._closing = True
        if self._retry_full is not None:
            self._retry_full.cancel()
            self._retry_full = None
        await cancel_and_wait(self._task)
        self._disconnect("peer closing")
        self.status.state = "closed"

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def beacon_address(self) -> Addr | None:
        return self.status.address if self.connected else None

    async def wait_connected(self, timeout: float | None = None) -> bool:
        try:
            await wait_for(self._connected.wait(), timeout)
            return True
        except TimeoutError:
            return False

    def set_tokens(self, tokens: set[bytes]) -> None:
        """The tokens to hold on this beacon; the difference is sent at once when connected."""
        self._tokens = set(tokens)
        if self.connected:
            self._sync_tokens()

    def refresh_candidates(self) -> None:
        if self.connected:
            self._send(Announce(candidates=tuple(self._get_candidates())))

    def check_now(self) -> None:
        """Something suggests the beacon may be gone (a relayed connection through it went
        quiet): Ping now rather than at the next keepalive, at most once a second. A restarted
        beacon answers with a stateless reset, a dead one with silence (lost after 3 misses)."""
        if self.connected and time.monotonic() - self._last_ping >= PONG_TIMEOUT:
            self._check.set()

    def send(self, message: Message) -> bool:
        """Send a frame if connected (relay requests); False when not connected."""
        if not self.connected:
            return False
        return self._send(message)

    # --- connection loop ----------------------------------------------------------------------

    async def _run(self) -> None:
        delay = BACKOFF_INITIAL
        while not self._closing:
            started = time.monotonic()
            try:
                await self._connect_and_serve()
            except asyncio.CancelledError:
                raise
            except (PinMismatch, TlsPinMismatch) as exc:
                self.status.pin_mismatches += 1
                self.status.failures += 1
                self.status.note(str(exc))
                log.error("beacon certificate does not match the pinned hash", beacon=str(self.spec), error=str(exc))
            except Exception as exc:  # noqa: BLE001 - any failure means: back off and retry
                self.status.failures += 1
                self.status.note(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
                log.info("beacon connection failed", beacon=str(self.spec), error=self.status.last_error)
            finally:
                self._disconnect("reconnecting")
            if self._closing:
                break
            if time.monotonic() - started > STABLE_AFTER:
                delay = BACKOFF_INITIAL
            self.status.state = "backoff"
            await asyncio.sleep(self._rng.uniform(0, delay))  # full jitter
            delay = min(BACKOFF_CAP, delay * 2)

    async def _connect_and_serve(self) -> None:
        self.status.state = "connecting"
        self._attempt_started = time.monotonic()
        link, self._upgrade = self._upgrade, None
        if link is None:
            link = await self.dialer.race()
        await self._adopt(link)
        await self._serve()

    _link_in_use: BeaconLink | None = None
    _attempt_started = 0.0  # monotonic time the current connection attempt began

    async def _adopt(self, link: BeaconLink) -> None:
        """Make ``link`` this client's connection: state, announce, early messages."""
        self._link_in_use = link
        self._protocol = link.protocol
        self._writer = link.writer
        self._channel = link.channel
        if link.reader is not None and link.decoder is not None:
            self._reader = link.reader
            self._decoder = link.decoder
        welcome = link.welcome
        self.status.address = link.address
        self.status.transport = link.transport
        if link.channel is not None:
            self._endpoint.stream_links[link.address] = link.channel.send_datagram
            if self._udp_retry is not None:
                self._udp_retry.cancel()
            self._udp_retry = asyncio.get_running_loop().create_task(self._retry_udp())
        self.status.observed = welcome.observed
        self.status.behaviour_port = welcome.behaviour_port
        self.status.connect_ms = 1000 * (time.monotonic() - self._attempt_started)
        self.max_tokens = max(1, welcome.max_tokens)
        self.status.state = "connected"
        self.status.connects += 1
        self.status.last_error = None
        self._announced = set()
        if (
            welcome.behaviour_port
            and self._observe_behaviour is not None
            and link.protocol is not None
            and time.monotonic() >= self._behaviour_silent_until
        ):
            # before our first Announce: introductions then carry what our NAT does (one RTT)
            started = time.monotonic()
            low, high = BEHAVIOUR_WAIT
            wait = min(high, max(low, 4 * smoothed_rtt(link.protocol.quic)))
            second = await self._observe_behaviour((link.address[0], welcome.behaviour_port), wait)
            if second is None:
                self._behaviour_silent_until = time.monotonic() + BEHAVIOUR_SILENT_SKIP
                log.info("nat behaviour port did not answer", beacon=str(self.spec), waited_ms=round(1000 * wait))
            self.mapping = self.status.mapping = classify(welcome.observed.to_socket(), second)
            self.status.second_observed, self.status.behaviour_ms = second, 1000 * (time.monotonic() - started)
            log.info("nat mapping", beacon=str(self.spec), second_port_saw=second, mapping=self.mapping)
        self._connected.set()
        self._send(Announce(candidates=tuple(self._get_candidates()), mapping=self.mapping))
        self._sync_tokens()
        for message in link.early:
            self._handle(message)
        log.info(
            "beacon connected",
            beacon=str(self.spec),
            address=link.address,
            transport=link.transport,
            observed=str(welcome.observed),
        )

    async def _retry_udp(self) -> None:
        """While on TCP: try QUIC again now and then; when it works, move back to it."""
        late, self.dialer.late_udp = self.dialer.late_udp, None
        while self._channel is not None and not self._closing:
            if late is None:
                await asyncio.sleep(UDP_RETRY_INTERVAL * self._rng.uniform(0.8, 1.2))
            channel = self._channel
            if channel is None or self._closing:
                if late is not None:
                    late.cancel()
                return
            try:
                if late is not None:
                    attempt, late = late, None
                    link = await attempt
                else:
                    link = await self.dialer.open_udp(await self.dialer.resolve())
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - UDP still blocked: stay on TCP
                self.status.udp_error = describe_failure(exc)
                continue
            if self._channel is not channel or self._closing:
                link.close("not needed")
                return
            self.status.udp_works, self.status.udp_error = True, None
            self.status.note("UDP works again: moving back from TCP")
            log.info("beacon reachable over UDP again", beacon=str(self.spec))
            self._upgrade = link
            channel.close()  # the serve loop ends; _run adopts the QUIC link at once
            return

    async def _serve(self) -> None:
        """Read frames until the connection ends or the keepalive declares the beacon lost."""
        loop = asyncio.get_running_loop()
        tasks = {loop.create_task(self._read_frames()), loop.create_task(self._keepalive())}
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # raises what ended it
            raise ConnectionError("beacon connection closed")
        finally:
            await cancel_and_wait(*tasks)

    async def _read_frames(self) -> None:
        protocol = self._protocol
        while True:
            channel = self._channel
            if channel is not None:
                items = await channel.receive()  # ConnectionError when the beacon closed it
                self._heard.set()
                for item in items:
                    if isinstance(item, bytes):
                        # a relay datagram, as if it had come over UDP from the beacon
                        if self._endpoint.on_datagram is not None and self.status.address is not None:
                            self._endpoint.on_datagram(item, self.status.address)
                    else:
                        self._handle(item)
                continue
            data = await self._reader.read(65536)
            if not data:
                if protocol is not None and protocol.reset_received:
                    raise BeaconLost("beacon reset the connection (it restarted and no longer knows it)")
                raise ConnectionError("beacon connection closed")
            self._heard.set()
            try:
                messages = self._decoder.feed(data)
            except WireError as exc:
                raise ConnectionError(f"beacon sent a bad frame: {exc}") from exc
            for message in messages:
                self._handle(message)

    async def _keepalive(self) -> None:
        """Ping every ~KEEPALIVE_INTERVAL; after a missed Pong, every PONG_TIMEOUT; after
        MISSED_PONGS misses in a row raise :class:`BeaconLost` (the beacon died or the path
        did): found within seconds instead of QUIC's 60 s idle timeout."""
        nonce = 0
        missed = 0
        first_unanswered = 0.0
        while True:
            nonce += 1
            sent = time.monotonic()
            self._pings[nonce] = sent
            while len(self._pings) > 8:
                self._pings.pop(next(iter(self._pings)))
            self._heard.clear()
            self._check.clear()
            self._last_ping = sent
            self._send(Ping(nonce=nonce))
            rtt = self.status.rtt
            wait = max(PONG_TIMEOUT, 4 * rtt) if rtt is not None else HANDSHAKE_TIMEOUT
            try:
                await wait_for(self._heard.wait(), wait)
            except TimeoutError:
                missed += 1
                if missed == 1:
                    first_unanswered = sent
                if missed >= MISSED_PONGS:
                    silent = time.monotonic() - first_unanswered
                    raise BeaconLost(f"beacon lost: no answer to {missed} Pings in {silent:.1f} s") from None
                continue  # ping again at once
            missed = 0
            interval = KEEPALIVE_INTERVAL * self._rng.uniform(1 - KEEPALIVE_JITTER, 1)
            if self.status.rtt is None:
                interval = 0.5  # the first Pong measures the RTT
            with contextlib.suppress(asyncio.TimeoutError):
                await wait_for(self._check.wait(), max(0.0, interval - (time.monotonic() - sent)))

    def _handle(self, message: Message) -> None:
        if isinstance(message, Introduction):
            self.status.introductions += 1
            self._on_introduction(self, message)
        elif isinstance(message, Pong):
            sent = self._pings.pop(message.nonce, None)
            if sent is not None:
                self.status.rtt = time.monotonic() - sent
        elif isinstance(message, Error):
            text = f"beacon error {message.error_code!s}: {message.message}"
            self.status.note(text)
            log.warning("beacon error", beacon=str(self.spec), code=str(message.error_code), message=message.message)
            if message.fatal:
                raise ConnectionError(text)
            if message.code == ErrorCode.TOO_MANY_TOKENS:
                self._announced = set()  # resync: the beacon rejected that announce
            elif message.code == ErrorCode.TOKEN_FULL:
                self._token_full(message.message)
        elif isinstance(message, (RelayGrant, RelayEnd, RelayRequest)):
            if self._on_relay_message is not None:
                self._on_relay_message(self, message)
        elif isinstance(message, Ping):
            self._send(Pong(nonce=message.nonce))

    def _token_full(self, message: str) -> None:
        """The beacon gave a token of ours no slot (or gave ours to someone else): say so, and
        announce it again later (slots free up as connections go)."""
        token = token_of_full_message(message)
        reason = message.split(": ", 1)[1] if token is not None and ": " in message else message
        text = f"beacon {self.spec.hostname} refused the meeting's token: {reason}"
        self.status.tokens_full += 1
        self.status.full_refusal = text
        if token is None:
            return
        self._announced.discard(token)
        if self._retry_full is None:
            delay = TOKEN_FULL_RETRY * self._rng.uniform(0.75, 1.25)
            self._retry_full = asyncio.get_running_loop().call_later(delay, self._retry_full_tokens)
        if self._on_token_full is not None:
            self._on_token_full(self, token, text)

    def _retry_full_tokens(self) -> None:
        self._retry_full = None
        if self.connected and not self._closing:
            self._sync_tokens()

    def _sync_tokens(self) -> None:
        add = sorted(self._tokens - self._announced)[: max(0, self.max_tokens - len(self._announced & self._tokens))]
        withdraw = sorted(self._announced - self._tokens)
        for start in range(0, max(len(add), len(withdraw)), MAX_TOKENS_PER_FRAME):
            chunk_add = tuple(add[start : start + MAX_TOKENS_PER_FRAME])
            chunk_withdraw = tuple(withdraw[start : start + MAX_TOKENS_PER_FRAME])
            if chunk_add or chunk_withdraw:
                self._send(Announce(add=chunk_add, withdraw=chunk_withdraw))
        self._announced = (self._announced | set(add)) - set(withdraw)

    def _send(self, message: Message) -> bool:
        if self._channel is not None:
            return self._channel.send(message)
        writer = self._writer
        if writer is None or writer.is_closing():
            return False
        writer.write(encode(message))
        return True

    def _disconnect(self, reason: str) -> None:
        was_connected = self._connected.is_set()
        self._connected.clear()
        self._writer = None
        protocol, self._protocol = self._protocol, None
        if protocol is not None:
            with contextlib.suppress(Exception):
                protocol.close(reason_phrase=reason)
        channel, self._channel = self._channel, None
        if channel is not None:
            channel.close()
            address = self.status.address
            if address is not None and self._endpoint.stream_links.get(address) == channel.send_datagram:
                del self._endpoint.stream_links[address]
        self._link_in_use = None
        if reason == "peer closing":
            if self.dialer.late_udp is not None:
                self.dialer.late_udp.cancel()
                self.dialer.late_udp = None
            if self._upgrade is not None:
                self._upgrade.close(reason)
                self._upgrade = None
            if self._udp_retry is not None:
                self._udp_retry.cancel()
        if self.status.state == "connected":
            self.status.state = "connecting"
        if was_connected and self._on_disconnect is not None and self.status.address is not None:
            self._on_disconnect(self, self.status.address)


def udp_unreachable(clients: list[BeaconClient]) -> bool:
    """True when some beacon is connected and every connected one is over TCP: our UDP to the
    beacons is blocked, so punching through NATs is pointless (relay at once)."""
    connected = [c for c in clients if c.connected]
    return bool(connected) and all(c.status.transport != "udp" for c in connected)


def own_mapping_varies(clients: list[BeaconClient]) -> bool | None:
    """Does our NAT give us a different public address per destination (a "symmetric" NAT)?
    Known once two beacons at different addresses told us what they see (or one beacon's second
    port did); else None."""
    seen: dict[Addr, Addr] = {}
    for client in clients:
        beacon, observed = client.beacon_address, client.status.observed
        # TCP (issue 14): an address seen over TCP says nothing about our UDP mapping
        if beacon is not None and observed is not None and client.status.transport == "udp":
            seen[beacon] = observed.to_socket()
    varies = mapping_varies(seen)
    if varies is None:  # one beacon: its second port may have told
        learned = {client.mapping for client in clients} - {None, MAPPING_UNKNOWN}
        if len(learned) == 1:
            varies = learned.pop() == MAPPING_DEPENDENT
    return varies
