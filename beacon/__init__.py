"""The discretpeer beacon: a QUIC rendezvous server that introduces peers waiting on the same
token and relays their encrypted datagrams when hole punching fails.

Run it with ``python -m beacon [--dir DIR]`` (see :mod:`beacon.__main__`), or in-process::

    from beacon import BeaconServer, loopback_config
    from certs import create_bundle

    bundle = create_bundle()                       # or certs.load_bundle(path)
    async with BeaconServer(loopback_config(), bundle) as server:
        host, port = server.addresses[0]           # ("127.0.0.1", <ephemeral port>)
        pin = server.fingerprint                   # 43-char base64url SHA-256 of the cert DER
        ...
    # restart on the same port with the same certificate (same pin):
    async with BeaconServer(loopback_config(port=port), bundle) as again:
        ...

``BeaconServer(config=None, bundle=None, *, log=None, metrics=None, manage_gc=False)``:
``start()``/``stop()`` or ``async with``; ``manage_gc=True`` (what ``python -m beacon`` does) keeps
Python's cyclic garbage collector off long-lived objects (``gc.freeze`` every second: no
second-long pauses with 10,000 peers) and is process-wide, so leave it off in a process that
hosts more than the beacon; ``addresses``, ``port``, ``ipv6_port``, ``fingerprint``, ``metrics_address``,
``metrics`` (a :class:`BeaconMetrics` with its own registry), ``connection_count``.
``loopback_config(**changes)`` is :class:`BeaconConfig` on 127.0.0.1, port 0, no IPv6, plus
``changes`` (validated).

Modules: :mod:`~beacon.config` settings, :mod:`~beacon.files` first-run files,
:mod:`~beacon.meetings` meeting table, :mod:`~beacon.store` where it lives (memory, or
:mod:`~beacon.store_redis` shared by workers and machines), :mod:`~beacon.workers` N processes on
one port, :mod:`~beacon.relay_link` relay across them, :mod:`~beacon.limits` rate/count limits,
:mod:`~beacon.relay` relay sessions, :mod:`~beacon.server` the QUIC edge,
:mod:`~beacon.metrics` Prometheus, :mod:`~beacon.logs` structured logs.
"""

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version

from beacon.config import BeaconConfig, ConfigError, load_config, loopback_config, render_template
from beacon.metrics import BeaconMetrics
from beacon.server import BeaconServer

try:
    __version__: str = _version("discretpeer")  # the one version, in pyproject.toml
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "BeaconConfig",
    "BeaconMetrics",
    "BeaconServer",
    "ConfigError",
    "load_config",
    "loopback_config",
    "render_template",
    "__version__",
]
