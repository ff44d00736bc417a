"""The meeting secrets of the browsers paired with this device: a small JSON file (mode 0600).

Who may open a shell is the config's allow list, as for peers: a browser's Ed25519 key is its peer
id, saved in ``[peers]`` and ``allow`` when it pairs. This file only keeps what the config cannot: the
secret each browser's signalling tokens derive from. Entries of files written before that (no
``"listed"``) are added to ``[peers]`` once, by the next ``web serve`` or ``invite --browser``.
"""

from __future__ import annotations

import base64
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from discretpeer.tokens import MeetingKeys

from .pairing import PairedBrowser

__all__ = ["BrowserStore", "MAX_BROWSERS"]

MAX_BROWSERS = 100


@dataclass
class BrowserStore:
    path: Path

    def load(self) -> list[PairedBrowser]:
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            raise ValueError(f"{self.path}: unreadable paired-browsers file ({exc})") from None
        out = []
        try:
            for entry in raw.get("browsers", [])[:MAX_BROWSERS]:
                out.append(
                    PairedBrowser(
                        base64.b64decode(entry["pub"], validate=True),
                        str(entry["name"]),
                        base64.b64decode(entry["meeting"], validate=True),
                        bool(entry.get("listed", False)),
                    )
                )
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{self.path}: malformed paired-browsers file ({type(exc).__name__}: {exc})") from None
        return out

    def add(self, browser: PairedBrowser) -> None:
        browsers = [b for b in self.load() if b.public_key != browser.public_key]
        if len(browsers) >= MAX_BROWSERS:
            raise ValueError(f"at most {MAX_BROWSERS} paired browsers: remove one first")
        browsers.append(browser)
        self._write(browsers)

    def mark_listed(self, keys: set[bytes]) -> None:
        """Remember that these browsers were added to [peers] (never again: removing one there sticks)."""
        browsers = self.load()
        for b in browsers:
            if b.public_key in keys:
                b.listed = True
        self._write(browsers)

    def _write(self, browsers: list[PairedBrowser]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = {
            "browsers": [
                {
                    "pub": base64.b64encode(b.public_key).decode(),
                    "name": b.name,
                    "meeting": base64.b64encode(b.meeting).decode(),
                    "listed": b.listed,
                    "added": int(time.time()),
                }
                for b in browsers
            ]
        }
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=1)
        os.replace(tmp, self.path)

    def mtime(self) -> float:
        try:
            return self.path.stat().st_mtime_ns / 1e9
        except OSError:
            return 0.0


def tokens_for(browser: PairedBrowser, now: float | None = None) -> tuple[str, ...]:
    """The signalling tokens of a paired browser (daily rotation, as the QUIC meetings)."""
    return tuple(t.hex() for t in MeetingKeys.derive(browser.meeting).tokens(now))
