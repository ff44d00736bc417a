"""Run inside a NAT-lab host: a headless Chromium pairs with a device, opens a shell, runs echo.

    python -m tests.web.lab_browser PAGE_URL CODE [--relay] [--marker TEXT]

Prints one JSON line: what the page showed, the path, and the timings (page open -> prompt with the
device already paired, keystroke -> echo). Drives Chromium over the DevTools protocol (chromium.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import time
from urllib.parse import urlsplit

from tests.web.chromium import Chromium

PROMPT = "dp$ "
# from sending a keystroke on the data channel to seeing its echo in xterm's buffer, measured in the
# page; polled through a MessageChannel (no 4 ms timer clamp, no 16 ms animation frames)
KEYSTROKE = """new Promise(resolve => {
  const want = '%s'; const mc = new MessageChannel(); const t0 = performance.now();
  mc.port1.onmessage = () => dp.terminalText().includes(want)
    ? resolve(performance.now() - t0) : mc.port2.postMessage(0);
  dp.channel.send(new TextEncoder().encode(want)); mc.port2.postMessage(0); })"""

# the page load, from navigation start: HTTP response, the modules, DOMContentLoaded
LOAD_TIMES = """(() => {
  const n = performance.getEntriesByType('navigation')[0]; const r = Math.round;
  const res = performance.getEntriesByType('resource')
    .map(e => [e.name.split('/').pop(), r(e.startTime), r(e.responseEnd)]);
  return { connect: r(n.connectEnd), response: r(n.responseEnd), dom: r(n.domContentLoadedEventEnd),
    resources: res }; })()"""


async def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("page")
    p.add_argument("code")
    p.add_argument("--relay", action="store_true")
    p.add_argument("--marker", default="lab")
    p.add_argument("--keystrokes", type=int, default=10)
    p.add_argument("--expect-path", choices=["direct", "relay"])
    args = p.parse_args()
    origin = "{0.scheme}://{0.netloc}".format(urlsplit(args.page))
    # the lab has no certificate a browser trusts: this origin is treated as secure (WebCrypto,
    # IndexedDB) for this test profile only; a real beacon serves the page over HTTPS
    browser = Chromium(extra=[f"--unsafely-treat-insecure-origin-as-secure={origin}"])
    result: dict[str, object] = {}
    try:
        await browser.start()
        await browser.navigate(args.page)
        await browser.wait_for("window.dp && window.dp.state.status === 'ready'")
        result["paired"] = await browser.eval(f"dp.pair({args.code!r})")
        result["status_after_pair"] = await browser.eval("dp.state.status")
        if not result["paired"]:
            return _emit(result)
        fragment = "#open=0&relay=1" if args.relay else "#open=0"
        # `web serve` picks up a new pairing when it next checks its file (every second): the time
        # measured is opening a shell on a device that already knows this browser
        await asyncio.sleep(1.2)
        started = time.monotonic()
        await browser.navigate(args.page + "?again" + fragment)
        await browser.wait_for(f"dp.terminalText().includes({PROMPT!r})", timeout=30)
        result["open_to_prompt_ms"] = (time.monotonic() - started) * 1000
        result["steps_ms"] = await browser.eval("dp.state.events.map(([t, s]) => [Math.round(t), s])")
        result["marks_ms"] = await browser.eval("dp.state.marks")
        result["load_ms"] = await browser.eval(LOAD_TIMES)
        await browser.type_text(f"echo {args.marker}-$((6*7))\r")
        await browser.wait_for(f"dp.terminalText().includes('{args.marker}-42')")
        echoes = []
        for i in range(args.keystrokes):
            # measured in the page: from the key event to the echoed character on screen
            echoes.append(await browser.eval(KEYSTROKE % f"q{i}"))
            await browser.type_text("\x15")
        result["keystroke_echo_ms"] = statistics.median(echoes)
        await browser.wait_for("dp.state.path", timeout=5)
        result["path_first"] = await browser.eval("dp.state.pair")
        if args.expect_path:  # ICE may start on the relay and move to a direct pair once one is checked
            with contextlib.suppress(TimeoutError):
                await browser.wait_for(f"dp.state.path === {args.expect_path!r}", timeout=15)
            result["path_settled_ms"] = (time.monotonic() - started) * 1000
        result["path"] = await browser.eval("dp.state.path")
        result["pair"] = await browser.eval("dp.state.pair")
        result["rtt_ms"] = (await browser.eval("dp.state.rtt") or 0) * 1000
        result["ok"] = True
    except Exception as exc:  # noqa: BLE001 - reported to the test as JSON
        result["error"] = f"{type(exc).__name__}: {exc}"
        result["status"] = await _status(browser)
    finally:
        await browser.close()
    return _emit(result)


async def _status(browser: Chromium) -> object:
    try:
        return await browser.eval("window.dp && dp.state.status")
    except Exception as exc:  # noqa: BLE001 - the page state, or why it could not be read
        return str(exc)


def _emit(result: dict[str, object]) -> int:
    print(json.dumps(result), flush=True)
    return 0 if result.get("ok") else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
