"""Browsers in the config's allow list: an old paired-browsers file is moved there once."""

from __future__ import annotations

import base64
import json
import tomllib
from pathlib import Path

from discretpeer.cli.output import Console
from discretpeer.cli.settings import Settings
from discretpeer.cli.web import _migrate
from discretpeer.identity import Identity, encode_peer_id
from discretpeer.web.browsers import BrowserStore


def test_an_old_paired_browsers_file_is_moved_to_the_allow_list_once(tmp_path: Path) -> None:
    key = Identity.generate().public_key
    store = BrowserStore(tmp_path / "web_browsers.json")
    store.path.write_text(
        json.dumps(
            {
                "browsers": [
                    {
                        "pub": base64.b64encode(key).decode(),
                        "name": "browser Linux x86_64",
                        "meeting": base64.b64encode(b"m" * 32).decode(),
                        "added": 1,
                    }
                ]
            }
        )
    )
    settings = Settings()
    settings.config_target = tmp_path / "config.toml"
    _migrate(settings, Console(quiet=True), store)
    config = tomllib.loads(settings.config_target.read_text())
    assert config["peers"] == {"browser-Linux-x86_64": encode_peer_id(key)}
    assert config["allow"] == ["browser-Linux-x86_64"]
    assert [b.listed for b in store.load()] == [True]
    settings.config_target.write_text("")  # the user removes it: it stays removed
    _migrate(settings, Console(quiet=True), store)
    assert tomllib.loads(settings.config_target.read_text()) == {}
