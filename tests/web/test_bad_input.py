"""Bad input against the browser shell: refused with a reason, bounded, and the others unaffected."""

from __future__ import annotations

import asyncio
import json

import websockets

from beacon.web import WebOptions, WebService

from .chromium import Chromium
from .conftest import PROMPT, page_url
from .pyclient import Signal, open_channel

READY = "window.dp && window.dp.state.status === 'ready'"
TOKEN = "cd" * 32


async def _pair(browser, service, device) -> None:
    await browser.navigate(page_url(service))
    await browser.wait_for(READY)
    code = device.invite()
    assert await browser.eval(f"dp.pair({code!r})"), await browser.eval("dp.state.status")


async def _shell_echo(browser, word: str) -> None:
    # on failure: the page's status and its timeline (offer, answer, ICE and DTLS states, in ms)
    assert await browser.eval("dp.open(0)"), await browser.eval("[dp.state.status, dp.state.marks.slice(-20)]")
    await browser.wait_for(f"dp.terminalText().includes({PROMPT!r})")
    await browser.type_text(f"echo {word}-$((40+2))\r")
    await browser.wait_for(f"dp.terminalText().includes('{word}-42')")


def _ws_url(service: WebService) -> str:
    host, port = service.address
    return f"ws://{host}:{port}/ws"


async def test_wrong_code_is_refused_and_burns_the_code(web_service, device, browser) -> None:
    await browser.navigate(page_url(web_service))
    await browser.wait_for(READY)
    code = device.invite()
    wrong = code[:-1] + ("0" if code[-1] != "0" else "1")
    assert not await browser.eval(f"dp.pair({wrong!r})")
    assert "wrong code" in await browser.eval("dp.state.status")
    await browser.wait_for("true")
    for _ in range(100):
        if device.refused["pairing"]:
            break
        await asyncio.sleep(0.05)
    assert device.refused["pairing"] == 1
    # one guess per code: the right code no longer works either
    assert not await browser.eval(f"dp.pair({code!r})")
    assert device.store.load() == []
    assert await browser.eval("dp.state.devices") == []


async def test_unpaired_browser_is_refused_paired_one_still_works(web_service, device, browser) -> None:
    await _pair(browser, web_service, device)
    stolen = await browser.eval(
        "new Promise(r => { const q = indexedDB.open('discretpeer', 1); q.onsuccess = () => "
        "{ const g = q.result.transaction('kv').objectStore('kv').get('devices'); "
        "g.onsuccess = () => r(g.result); }; })"
    )
    assert len(stolen) == 1
    other = Chromium()
    try:
        await other.start()
        await other.navigate(page_url(web_service))
        await other.wait_for(READY)
        # a browser that knows the meeting secret (copied) but holds another key
        await other.eval(
            "new Promise(r => { const q = indexedDB.open('discretpeer', 1); q.onsuccess = () => { "
            "const t = q.result.transaction('kv', 'readwrite'); "
            f"t.objectStore('kv').put({json.dumps(stolen)}, 'devices'); t.oncomplete = r; }}; }})"
        )
        await other.eval("dp.open(0)")
        status = await other.wait_for("dp.state.status.startsWith('refused') && dp.state.status")
        assert "not paired" in status
        assert not await other.eval("dp.state.bound")
    finally:
        await other.close()
    assert device.refused["binding"] == 1
    await _shell_echo(browser, "still")


async def test_replayed_binding_signature_is_refused(web_service, device, browser) -> None:
    await _pair(browser, web_service, device)
    await _shell_echo(browser, "first")
    proof = await browser.eval("dp.lastProof")  # a genuine proof, for the browser's session
    paired = device.store.load()[0]
    pc, channel, _, _, signal = await open_channel(_ws_url(web_service), paired)
    try:
        replies: asyncio.Queue = asyncio.Queue()
        channel.on("message", replies.put_nowait)
        channel.send(json.dumps(proof))  # replayed into another session (other fingerprints)
        reply = json.loads(await asyncio.wait_for(replies.get(), 10))
        assert "does not verify" in reply["error"]
    finally:
        await pc.close()
        await signal.__aexit__()
    assert device.refused["binding"] == 1


async def test_malformed_and_oversized_signalling(web_service, device, browser) -> None:
    url = _ws_url(web_service)
    junk = [
        "not json",
        "[]",
        '{"v":9}',
        '{"v":1,"t":"send","token":"zz","data":{}}',
        json.dumps({"v": 1, "t": "turn", "token": TOKEN + "0"}),
    ]
    for raw in junk:
        async with websockets.connect(url) as ws:
            await ws.send(raw)
            reply = json.loads(await asyncio.wait_for(ws.recv(), 5))
            assert reply["t"] == "error" and reply["reason"]
            await asyncio.wait_for(ws.wait_closed(), 5)
            assert ws.close_code == 1008
    async with websockets.connect(url, max_size=None) as ws:  # larger than the beacon takes
        await ws.send(json.dumps({"v": 1, "t": "send", "token": TOKEN, "data": {"sdp": "x" * 40000}}))
        await asyncio.wait_for(ws.wait_closed(), 5)
        assert ws.close_code == 1009
    assert web_service.refused["bad_message"] == len(junk)
    # an offer SDP the beacon forwards but the device refuses as too large
    await _pair(browser, web_service, device)
    paired = device.store.load()[0]
    from discretpeer.web.browsers import tokens_for

    async with Signal(url) as signal:
        tokens = list(tokens_for(paired))
        await signal.send(t="listen", tokens=tokens)
        await signal.send(t="send", token=tokens[0], data={"k": "offer", "id": "big", "sdp": "v=0\r\n" * 4000})
        reply = (await signal.expect("error"))["data"]
        assert "larger than" in reply["reason"]
        await signal.send(t="send", token=tokens[0], data={"k": "offer", "id": "bad", "sdp": "v=0\r\nbogus"})
        reply = (await signal.expect("error"))["data"]
        assert reply["id"] == "bad" and "refused" in reply["reason"]
    assert device.refused["bad_signal"] == 2
    await _shell_echo(browser, "unaffected")


async def test_a_client_that_never_reads_is_dropped_others_unaffected() -> None:
    service = WebService(
        WebOptions(host="127.0.0.1", port=0, max_queued_messages=32, message_burst=1000, messages_per_second=1000)
    )
    await service.start()
    try:
        url = _ws_url(service)
        async with Signal(url) as sender, Signal(url) as listener:
            victim = await websockets.connect(url)
            await victim.send(json.dumps({"v": 1, "t": "listen", "tokens": [TOKEN]}))
            await sender.send(t="listen", tokens=[TOKEN])
            await listener.send(t="listen", tokens=[TOKEN])
            await asyncio.sleep(0.2)
            victim.transport.pause_reading()  # never reads again
            blob = "y" * 30000
            for _ in range(1000):  # up to 30 MB at a victim that reads nothing
                await sender.send(t="send", token=TOKEN, data={"k": "noise", "b": blob})
                await asyncio.sleep(0.003)  # a steady stream the reading listener keeps up with
                if service.refused["slow_reader"]:
                    break
            assert service.refused["slow_reader"] >= 1
            assert len(service.clients) == 2  # the victim is gone, the others are there
            assert all(c.queue.qsize() <= 32 for c in service.clients)
            await sender.send(t="send", token=TOKEN, data={"k": "hello"})
            got = await listener.expect("hello")
            assert got["data"] == {"k": "hello"}
            victim.transport.abort()
    finally:
        await service.stop()


async def test_revoked_browser_loses_its_session_and_cannot_reopen(web_service, device, browser) -> None:
    await _pair(browser, web_service, device)
    await _shell_echo(browser, "before")
    device.store.path.write_text('{"browsers": []}')  # the owner removes the browser ...
    device.reload()  # ... and sends SIGHUP (`discretpeer web serve` re-reads the file on its own too)
    await browser.wait_for(
        "['closed', 'failed', 'disconnected'].includes(dp.pc.connectionState) || dp.channel.readyState !== 'open'",
        timeout=10,
    )
    assert not device.sessions
    assert not await browser.eval("dp.open(0)")
    assert "offline" in await browser.eval("dp.state.status")


async def test_a_connection_that_never_proves_itself_is_closed(web_service, device, browser, monkeypatch) -> None:
    from discretpeer.web import device as device_module

    monkeypatch.setattr(device_module, "BIND_TIMEOUT", 0.5)
    await _pair(browser, web_service, device)
    pc, _channel, _, _, signal = await open_channel(_ws_url(web_service), device.store.load()[0])
    try:
        for _ in range(100):
            if device.refused["bind_timeout"]:
                break
            await asyncio.sleep(0.05)
        assert device.refused["bind_timeout"] == 1
        assert not device.sessions
    finally:
        await pc.close()
        await signal.__aexit__()


async def test_a_corrupt_paired_browsers_file_keeps_the_device_serving(device) -> None:
    from discretpeer.web.pairing import PairedBrowser

    device.store.add(PairedBrowser(b"\x01" * 32, "phone", b"\x02" * 32))
    device.reload()
    before = dict(device.browsers)
    assert len(before) == 2  # this window's token and the previous one's
    device.store.path.write_text("{ not json")
    device.reload()
    assert device.browsers == before
    assert device.connected.is_set()


async def test_trickled_candidates_are_bounded_and_only_for_the_own_session(web_service, device, browser) -> None:
    from discretpeer.web.browsers import tokens_for
    from discretpeer.web.device import MAX_CANDIDATES

    await _pair(browser, web_service, device)
    paired = device.store.load()[0]
    pc, _channel, _, _, signal = await open_channel(_ws_url(web_service), paired, sid="tr")
    try:
        token = list(tokens_for(paired))[0]
        before = device.refused["bad_signal"]

        async def candidate(sid: str, c: object) -> None:
            await signal.send(t="send", token=token, data={"k": "candidate", "id": sid, "c": c})

        await candidate("nobody", "1 1 udp 1 192.0.2.1 9 typ host")  # no such session: ignored
        await candidate("tr", 5)  # not a candidate line
        await candidate("tr", "x" * 600)  # too long
        for i in range(MAX_CANDIDATES + 5):  # the first MAX_CANDIDATES are taken, the rest refused
            await candidate("tr", f"candidate:{i} 1 udp 2122260223 192.0.2.{i + 1} 9 typ host")
        await asyncio.sleep(0.5)
        assert device.refused["bad_signal"] == before + 2 + 5
        assert pc.connectionState == "connected" and "tr" in device.sessions
    finally:
        await pc.close()
        await signal.__aexit__(None, None, None)
