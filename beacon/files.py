"""The beacon's directory: created on first run, reused afterwards, never overwritten.

``cert_der.bin`` (certificate + key, mode 0600), ``certificate_hash.txt`` (the pin, derived from
the certificate), ``Beacon.conf.toml`` (commented template) and ``logs/``. A corrupt or unreadable
file stops the beacon with :class:`StartupError` (one line naming the file) and stays as it is.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from beacon.config import BeaconConfig, ConfigError, load_config, render_template
from certs import CertificateBundle, CertificateFileError, load_or_create_bundle
from certs.smallfile import SmallFileError, describe_missing, read_small_file

CERT_FILE = "cert_der.bin"
HASH_FILE = "certificate_hash.txt"
CONFIG_FILE = "Beacon.conf.toml"
LOG_DIR = "logs"


class StartupError(Exception):
    """The beacon cannot start; ``str()`` is one line naming the file (and the key)."""


@dataclass
class BeaconFiles:
    directory: Path
    config_path: Path
    cert_path: Path
    hash_path: Path
    log_dir: Path
    config: BeaconConfig
    bundle: CertificateBundle
    created: list[Path] = field(default_factory=list)

    @property
    def fingerprint(self) -> str:
        return self.bundle.fingerprint


def _write_new(path: Path, text: str, mode: int = 0o644) -> bool:
    """Create ``path`` with ``text`` unless it exists (O_EXCL: never overwrite). True if created."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        return False
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return True


def _os_error(path: Path, exc: OSError) -> StartupError:
    return StartupError(f"{path}: {describe_missing(path) or exc.strerror or exc}")


def _write_hash_file(hash_path: Path, wanted: str) -> bool:
    """Make ``certificate_hash.txt`` say ``wanted``. True if it did not exist.

    It is derived from the certificate, so a stale regular file is rewritten. A symlink (or a
    directory, FIFO, device) is the operator's: kept when it already tells the truth, otherwise
    the beacon stops rather than write through it or replace it."""
    try:
        info: os.stat_result | None = os.lstat(hash_path)
    except FileNotFoundError:
        info = None
    except OSError as exc:
        raise _os_error(hash_path, exc) from exc
    if info is not None and not stat.S_ISREG(info.st_mode):
        hint = f"remove it and the beacon writes it again from {CERT_FILE}"
        try:
            current = read_small_file(hash_path, 1024)
        except (SmallFileError, OSError) as exc:
            problem = str(exc) if isinstance(exc, SmallFileError) else f"{hash_path}: {exc.strerror or exc}"
            raise StartupError(f"{problem}; {hint}") from exc
        if current == wanted.encode("ascii"):
            return False
        raise StartupError(f"{hash_path}: a symbolic link to a file with another hash; {hint}")
    if info is not None:
        try:
            if read_small_file(hash_path, 1024) == wanted.encode("ascii"):
                return False
        except (SmallFileError, OSError):
            pass  # a stale or odd regular file: rewritten below
    try:
        tmp = hash_path.with_name(f".{HASH_FILE}.{os.getpid()}.tmp")
        tmp.unlink(missing_ok=True)
        tmp.write_text(wanted, encoding="ascii")
        os.replace(tmp, hash_path)
    except OSError as exc:
        raise _os_error(hash_path, exc) from exc
    return info is None


def prepare(
    directory: Path,
    *,
    config_path: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> BeaconFiles:
    """Create what is missing in ``directory``, load everything, validate. Raises StartupError.

    ``config_path`` given explicitly must exist; the default one is created from the template."""
    directory = Path(directory).absolute()
    created: list[Path] = []
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except FileExistsError as exc:
        dangling = describe_missing(directory)
        raise StartupError(f"{directory}: {dangling or 'not a directory'}") from exc
    except OSError as exc:
        raise _os_error(directory, exc) from exc

    if config_path is None:
        config_path = directory / CONFIG_FILE
        try:
            if _write_new(config_path, render_template()):
                created.append(config_path)
        except OSError as exc:
            raise _os_error(config_path, exc) from exc
    try:
        config = load_config(Path(config_path), overrides)
    except ConfigError as exc:
        raise StartupError(str(exc)) from exc

    cert_path = directory / CERT_FILE
    try:
        bundle, made = load_or_create_bundle(cert_path)
    except CertificateFileError as exc:
        raise StartupError(str(exc)) from exc
    except OSError as exc:
        raise _os_error(cert_path, exc) from exc
    if made:
        created.append(cert_path)

    hash_path = directory / HASH_FILE
    if _write_hash_file(hash_path, bundle.fingerprint + "\n"):
        created.append(hash_path)

    log_dir = directory / LOG_DIR
    try:
        if not log_dir.is_dir():
            log_dir.mkdir()
            created.append(log_dir)
    except OSError as exc:
        raise _os_error(log_dir, exc) from exc

    return BeaconFiles(
        directory=directory,
        config_path=Path(config_path),
        cert_path=cert_path,
        hash_path=hash_path,
        log_dir=log_dir,
        config=config,
        bundle=bundle,
        created=created,
    )
