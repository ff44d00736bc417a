"""Add a peer to the config file (``[peers]`` name and ``allow`` entry), keeping every other key.

The file is read with tomllib and written back with tomli-w (comments are not kept: TOML
libraries that keep them are not worth a dependency here), atomically, with its mode kept (a new
file is 0600: it may hold a ``secret``).
"""

from __future__ import annotations

import contextlib
import os
import stat
import tomllib
from pathlib import Path
from typing import Any

import tomli_w

from discretpeer.config import ConfigError


def add_peer(path: Path, name: str, peer_id: str) -> tuple[str, bool]:
    """Name ``peer_id`` in [peers] and allow it. Returns (the name used, whether the file changed).

    A peer already named keeps its name; a name taken by another peer gets a suffix (-2, -3, ...)."""
    data: dict[str, Any] = {}
    mode = 0o600
    if path.exists():
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
            mode = stat.S_IMODE(path.stat().st_mode)
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{path}: cannot update it ({exc})") from None
    peers = data.setdefault("peers", {})
    allow = data.setdefault("allow", [])
    if not isinstance(peers, dict) or not isinstance(allow, list):
        raise ConfigError(f"{path}: 'peers' must be a table and 'allow' a list to add a peer")
    known = [n for n, value in peers.items() if value == peer_id]
    if known:
        name = known[0]
    else:
        base, count = name, 1
        while name in peers:
            count += 1
            name = f"{base}-{count}"
        peers[name] = peer_id
    changed = not known
    names_of_peer = {peer_id, *[n for n, value in peers.items() if value == peer_id]}
    if not any(isinstance(entry, str) and entry in names_of_peer for entry in allow):
        allow.append(name)
        changed = True
    if changed:
        _write(path, data, mode)
    return name, changed


def _write(path: Path, data: dict[str, Any], mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(tomli_w.dumps(data).encode("utf-8"))
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise ConfigError(f"{path}: cannot write it ({exc.strerror or exc})") from None
