"""First-run files: created once with the right modes, reused after, never overwritten."""

from __future__ import annotations

import os
import resource
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from beacon.config import BeaconConfig, ConfigError, load_config, render_template
from beacon.files import StartupError, prepare
from certs import CertificateBundle, CertificateFileError, certificate_fingerprint, create_bundle, save_bundle
from certs.smallfile import SmallFileError, read_small_file
from tests.support.processes import beacon_command


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


# --- bad files, as an operator meets them: a real `python -m beacon` process each -------------

ROOT = Path(__file__).resolve().parents[2]


def _valid_bundle(d: Path) -> None:
    save_bundle(create_bundle(), d / "cert_der.bin")


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _big(path: Path, size: int) -> None:
    with open(path, "wb") as handle:
        handle.truncate(size)


def _truncated(path: Path) -> None:
    path.write_bytes(create_bundle().to_bytes()[:-7])


def _wrong_hash_link(d: Path) -> None:
    _valid_bundle(d)
    (d / "elsewhere.txt").write_text("A" * 43 + "\n")
    (d / "certificate_hash.txt").symlink_to(d / "elsewhere.txt")


# name → (setup(dir), bad path relative to dir, words the error line must contain, extra flags)
BAD_FILES = {
    "cert dangling symlink": (
        lambda d: (d / "cert_der.bin").symlink_to("/nonexistent/cert_der.bin"),
        "cert_der.bin",
        ["dangling symbolic link", "not creating a new identity"],
        [],
    ),
    "cert directory": (lambda d: (d / "cert_der.bin").mkdir(), "cert_der.bin", ["a directory"], []),
    "cert FIFO": (lambda d: _fifo(d / "cert_der.bin"), "cert_der.bin", ["a FIFO"], []),
    "cert /dev/zero": (lambda d: (d / "cert_der.bin").symlink_to("/dev/zero"), "cert_der.bin", ["a device"], []),
    "cert truncated": (lambda d: _truncated(d / "cert_der.bin"), "cert_der.bin", ["truncated"], []),
    "cert too large": (lambda d: _big(d / "cert_der.bin", 10 * 1024 * 1024), "cert_der.bin", ["too large"], []),
    "cert empty": (lambda d: (d / "cert_der.bin").write_bytes(b""), "cert_der.bin", ["bad magic"], []),
    "config /dev/zero": (
        lambda d: (d / "Beacon.conf.toml").symlink_to("/dev/zero"),
        "Beacon.conf.toml",
        ["a device"],
        [],
    ),
    "config directory": (lambda d: (d / "Beacon.conf.toml").mkdir(), "Beacon.conf.toml", ["a directory"], []),
    "config FIFO": (lambda d: _fifo(d / "Beacon.conf.toml"), "Beacon.conf.toml", ["a FIFO"], []),
    "config dangling symlink": (
        lambda d: (d / "Beacon.conf.toml").symlink_to("/nonexistent/b.toml"),
        "Beacon.conf.toml",
        ["dangling symbolic link"],
        [],
    ),
    "config too large": (
        lambda d: _big(d / "Beacon.conf.toml", 64 * 1024 * 1024),
        "Beacon.conf.toml",
        ["too large"],
        [],
    ),
    "config not UTF-8": (
        lambda d: (d / "Beacon.conf.toml").write_bytes(b"port = 1\xff\n"),
        "Beacon.conf.toml",
        ["cannot read", "utf-8"],
        [],
    ),
    "--config FIFO": (lambda d: _fifo(d / "other.toml"), "other.toml", ["a FIFO"], ["--config", "{d}/other.toml"]),
    "hash /dev/zero": (
        lambda d: (_valid_bundle(d), (d / "certificate_hash.txt").symlink_to("/dev/zero")),
        "certificate_hash.txt",
        ["a device", "remove it"],
        [],
    ),
    "hash directory": (lambda d: (d / "certificate_hash.txt").mkdir(), "certificate_hash.txt", ["a directory"], []),
    "hash FIFO": (lambda d: _fifo(d / "certificate_hash.txt"), "certificate_hash.txt", ["a FIFO"], []),
    "hash dangling symlink": (
        lambda d: (d / "certificate_hash.txt").symlink_to("/nonexistent/h.txt"),
        "certificate_hash.txt",
        ["dangling symbolic link"],
        [],
    ),
    "hash symlink, other hash": (_wrong_hash_link, "certificate_hash.txt", ["another hash"], []),
    "log directory": (
        lambda d: (d / "logs" / "beacon.log").mkdir(parents=True),
        "logs/beacon.log",
        ["cannot write the log", "a directory"],
        [],
    ),
    "log FIFO": (
        lambda d: ((d / "logs").mkdir(), _fifo(d / "logs" / "beacon.log")),
        "logs/beacon.log",
        ["cannot write the log", "a FIFO"],
        [],
    ),
    "log dangling dir symlink": (
        lambda d: ((d / "logs").mkdir(), (d / "logs" / "beacon.log").symlink_to("/nonexistent/dir/beacon.log")),
        "logs/beacon.log",
        ["cannot write the log"],
        [],
    ),
    "--dir is a file": (lambda d: (d / "afile").write_text("x"), "afile", ["not a directory"], ["--dir", "{d}/afile"]),
    "--dir dangling symlink": (
        lambda d: (d / "gone").symlink_to("/nonexistent/beacon"),
        "gone",
        ["dangling symbolic link"],
        ["--dir", "{d}/gone"],
    ),
    "logs is a file": (lambda d: (d / "logs").write_text("x"), "logs", ["exists"], []),
}


def _state(path: Path) -> tuple:
    """What must not change: the type, the link target, the content of a small regular file."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return ("missing",)
    if stat.S_ISLNK(info.st_mode):
        return ("link", os.readlink(path))
    if stat.S_ISREG(info.st_mode):
        return ("file", info.st_size, path.read_bytes() if info.st_size < 1024 * 1024 else None)
    return (stat.S_IFMT(info.st_mode),)


def _limit_memory() -> None:  # before the fix, /dev/zero was read until MemoryError: make that quick
    resource.setrlimit(resource.RLIMIT_AS, (2 * 1024**3, 2 * 1024**3))


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_file_one_line_exit_2_nothing_replaced(tmp_path, case):
    setup, bad, words, flags = BAD_FILES[case]
    d = tmp_path / "beacon"
    d.mkdir()
    setup(d)
    if bad != "cert_der.bin" and not os.path.lexists(d / "cert_der.bin"):
        _valid_bundle(d)  # an existing beacon: its certificate must survive whatever else is wrong
    watched = [d / bad, d / "cert_der.bin"]  # (certificate_hash.txt is derived: it may be written)
    before = [_state(p) for p in watched]
    run = subprocess.run(
        beacon_command(d, *[f.format(d=d) for f in flags]),
        cwd=ROOT,
        capture_output=True,
        timeout=20,
        preexec_fn=_limit_memory,  # a FIFO must not block
    )
    err = run.stderr.decode(errors="replace")
    assert run.returncode == 2, (case, run.returncode, err[-2000:])
    assert "Traceback" not in err, err
    assert run.stdout == b""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("discret-beacon: error: "), err
    assert str(d / bad) in lines[0], err
    for word in words:
        assert word.lower() in lines[0].lower(), (word, err)
    assert [_state(p) for p in watched] == before, "a file was created or replaced"


def test_symlinked_files_that_tell_the_truth_are_used(tmp_path):
    """A certificate kept elsewhere (a secrets directory) and a hash file published through a
    symlink are read through the link and left as links."""
    first = prepare(tmp_path / "a")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "cert_der.bin").symlink_to(tmp_path / "a" / "cert_der.bin")
    (tmp_path / "b" / "certificate_hash.txt").symlink_to(tmp_path / "a" / "certificate_hash.txt")
    (tmp_path / "b" / "Beacon.conf.toml").symlink_to(tmp_path / "a" / "Beacon.conf.toml")
    second = prepare(tmp_path / "b")
    assert second.fingerprint == first.fingerprint
    for name in ("cert_der.bin", "certificate_hash.txt", "Beacon.conf.toml"):
        assert (tmp_path / "b" / name).is_symlink()
    assert second.created == [tmp_path / "b" / "logs"]


def test_log_to_dev_null_is_allowed(tmp_path):
    from beacon.logs import BeaconLog

    tmp_path.joinpath("beacon.log").symlink_to("/dev/null")
    log = BeaconLog(tmp_path, console=None)
    log.log.info("hello")
    log.close()
    assert tmp_path.joinpath("beacon.log").is_symlink()


# --- property tests of the three readers: any bytes give the content or one clean error -------

_BUNDLE = create_bundle().to_bytes()


@settings(max_examples=150, deadline=None)
@given(data=st.binary(max_size=300), limit=st.integers(0, 200))
def test_read_small_file_is_exact_or_refuses(data, limit):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "f"
        path.write_bytes(data)
        if len(data) <= limit:
            assert read_small_file(path, limit) == data
        else:
            with pytest.raises(SmallFileError, match="too large"):
                read_small_file(path, limit)


@settings(max_examples=300, deadline=None)
@given(
    cut=st.integers(0, len(_BUNDLE)),
    flips=st.lists(st.tuples(st.integers(0, len(_BUNDLE) - 1), st.integers(1, 255)), max_size=3),
    tail=st.binary(max_size=8),
)
def test_bundle_parser_raises_only_its_error(cut, flips, tail):
    data = bytearray(_BUNDLE)
    for index, xor in flips:
        data[index] ^= xor
    data = bytes(data[:cut]) + tail
    try:
        bundle = CertificateBundle.from_bytes(data, source="x")
    except CertificateFileError as exc:
        assert str(exc).startswith("x: ") and "\n" not in str(exc)
    else:
        assert bundle.to_bytes() == data  # only an intact bundle parses, and it round-trips


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.binary(max_size=200), st.text(max_size=200).map(str.encode)))
def test_config_loader_raises_only_config_error(data):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "Beacon.conf.toml"
        path.write_bytes(data)
        try:
            load_config(path)
        except ConfigError as exc:
            assert str(exc).startswith(f"{path}: ") and "\n" not in str(exc)


_RACER = """
import os, sys, time
from pathlib import Path
from certs import load_or_create_bundle
go = Path(sys.argv[2])
while not go.exists():
    time.sleep(0.0005)
bundle, made = load_or_create_bundle(Path(sys.argv[1]))
print(bundle.fingerprint, made)
"""


def test_beacons_starting_together_share_one_identity(tmp_path):
    """Six processes create cert_der.bin in one empty directory at the same moment: exactly one
    creates it, all use it (was: each wrote its own, the last rename won, five served a hash that
    no longer matched the file)."""
    path, go = tmp_path / "cert_der.bin", tmp_path / "go"
    racers = [
        subprocess.Popen([sys.executable, "-c", _RACER, str(path), str(go)], cwd=ROOT, stdout=subprocess.PIPE)
        for _ in range(6)
    ]
    time.sleep(1.0)  # let them all start and wait
    go.touch()
    results = [racer.communicate(timeout=30)[0].decode().split() for racer in racers]
    on_disk = certificate_fingerprint(CertificateBundle.from_bytes(path.read_bytes()).certificate_der)
    assert [fingerprint for fingerprint, _ in results] == [on_disk] * 6
    assert [made for _, made in results].count("True") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cert_der.bin", "go"]  # no temporary file left
