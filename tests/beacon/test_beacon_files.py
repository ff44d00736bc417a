"""First-run files: created once with the right modes, reused after, never overwritten."""

from __future__ import annotations

import shutil
import stat

import pytest

from beacon.config import BeaconConfig, render_template
from beacon.files import StartupError, prepare
from certs import certificate_fingerprint


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_first_run_creates_everything(tmp_path):
    files = prepare(tmp_path / "b")
    d = tmp_path / "b"
    assert {p.name for p in files.created} == {"Beacon.conf.toml", "cert_der.bin", "certificate_hash.txt", "logs"}
    assert mode(d / "cert_der.bin") == 0o600
    assert (d / "logs").is_dir()
    assert (d / "Beacon.conf.toml").read_text() == render_template()
    fingerprint = (d / "certificate_hash.txt").read_text()
    assert fingerprint == files.fingerprint + "\n" and len(fingerprint) == 44
    assert files.fingerprint == certificate_fingerprint(files.bundle.certificate_der)
    assert files.config == BeaconConfig()


def test_second_run_keeps_the_hash(tmp_path):
    first = prepare(tmp_path)
    cert = (tmp_path / "cert_der.bin").read_bytes()
    second = prepare(tmp_path)
    assert second.created == []
    assert second.fingerprint == first.fingerprint
    assert (tmp_path / "cert_der.bin").read_bytes() == cert


def test_copied_certificate_gives_the_same_hash(tmp_path):
    first = prepare(tmp_path / "one")
    (tmp_path / "two").mkdir()
    shutil.copy(tmp_path / "one" / "cert_der.bin", tmp_path / "two" / "cert_der.bin")
    second = prepare(tmp_path / "two")
    assert second.fingerprint == first.fingerprint
    assert (tmp_path / "two" / "certificate_hash.txt").read_text() == first.fingerprint + "\n"


def test_stale_hash_file_is_corrected(tmp_path):
    files = prepare(tmp_path)
    (tmp_path / "certificate_hash.txt").write_text("stale\n")
    assert prepare(tmp_path).fingerprint == files.fingerprint
    assert (tmp_path / "certificate_hash.txt").read_text() == files.fingerprint + "\n"


@pytest.mark.parametrize("content", [b"", b"garbage", b"DPCERT\x00\x01\x00\x00\x00\x05abc"])
def test_corrupt_certificate_is_not_overwritten(tmp_path, content):
    (tmp_path / "cert_der.bin").write_bytes(content)
    with pytest.raises(StartupError) as info:
        prepare(tmp_path)
    assert str(tmp_path / "cert_der.bin") in str(info.value)
    assert (tmp_path / "cert_der.bin").read_bytes() == content


def test_bad_config_is_not_overwritten(tmp_path):
    (tmp_path / "Beacon.conf.toml").write_text("port = 99999\n")
    with pytest.raises(StartupError, match="key 'port'"):
        prepare(tmp_path)
    assert (tmp_path / "Beacon.conf.toml").read_text() == "port = 99999\n"


def test_explicit_config_must_exist(tmp_path):
    with pytest.raises(StartupError, match="missing.toml: cannot read"):
        prepare(tmp_path, config_path=tmp_path / "missing.toml")


def test_unreadable_certificate_is_named(tmp_path):
    (tmp_path / "cert_der.bin").mkdir()
    with pytest.raises(StartupError, match="cert_der.bin: cannot read"):
        prepare(tmp_path)
    assert (tmp_path / "cert_der.bin").is_dir()


def test_logs_rotate_by_size(tmp_path):
    import io
    import json

    from beacon.logs import BeaconLog

    console = io.StringIO()
    log = BeaconLog(tmp_path, level="info", max_bytes=4096, backup_count=2, console=console)
    for n in range(200):
        log.log.info("tick", n=n, padding="x" * 50)
    log.log.debug("hidden")
    log.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["beacon.log", "beacon.log.1", "beacon.log.2"]
    last = (tmp_path / "beacon.log").read_text().splitlines()[-1]
    assert json.loads(last)["n"] == 199 and json.loads(last)["level"] == "info"
    lines = console.getvalue().splitlines()
    assert len(lines) == 200 and "tick" in lines[0] and "n=0" in lines[0]
    assert "hidden" not in console.getvalue()
