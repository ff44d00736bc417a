"""A WebRTC client in Python (aiortc) that speaks the page's protocol: the attacker in the bad-input tests."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import websockets
from aiortc import RTCPeerConnection, RTCSessionDescription

from discretpeer.web.binding import only_sha256, sdp_fingerprint
from discretpeer.web.browsers import tokens_for
from discretpeer.web.pairing import PairedBrowser


class Signal:
    def __init__(self, url: str) -> None:
        self.url = url
        self.inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def __aenter__(self) -> Signal:
        self.ws = await websockets.connect(self.url, max_size=None)
        self.reader = asyncio.ensure_future(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.reader.cancel()
        await self.ws.close()

    async def _read(self) -> None:
        async for raw in self.ws:
            await self.inbox.put(json.loads(raw))

    async def send(self, **message: Any) -> None:
        await self.ws.send(json.dumps({"v": 1, **message}))

    async def expect(self, kind: str, timeout: float = 10.0) -> dict[str, Any]:
        async def next_of_kind() -> dict[str, Any]:
            while True:
                message = await self.inbox.get()
                if message.get("t") == kind or (message.get("t") == "msg" and message["data"].get("k") == kind):
                    return message

        return await asyncio.wait_for(next_of_kind(), timeout)


async def open_channel(url: str, browser: PairedBrowser, sid: str = "py") -> tuple[Any, Any, str, str, Signal]:
    """Offer to the device as ``browser`` (which must be in its store) and open a "shell" channel."""
    signal = await Signal(url).__aenter__()
    tokens = list(tokens_for(browser))
    await signal.send(t="listen", tokens=tokens)
    await signal.expect("present")
    pc = RTCPeerConnection()
    channel = pc.createDataChannel("shell")
    opened = asyncio.Event()
    channel.on("open", opened.set)
    await pc.setLocalDescription(await pc.createOffer())
    offer = only_sha256(pc.localDescription.sdp)
    await signal.send(t="send", token=tokens[0], data={"k": "offer", "id": sid, "sdp": offer})
    answer = (await signal.expect("answer"))["data"]
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
    await asyncio.wait_for(opened.wait(), 10)
    return pc, channel, sdp_fingerprint(offer), sdp_fingerprint(answer["sdp"]), signal
