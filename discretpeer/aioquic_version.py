"""The aioquic release this package was tested with, checked when the QUIC stack is first imported.

The adapter modules (``discretpeer/flow.py``, ``path_mtu.py``, ``connection.py``, ``endpoint.py``,
``beacon/quic_tuning.py``) use aioquic's private API; an untested release could change it under
them and fail in ways far from the cause. So an untested release fails at once, with a message
that says what to install (``DISCRETPEER_ANY_AIOQUIC=1`` skips the check, at your own risk).
"""

from __future__ import annotations

import os
from importlib import metadata

TESTED = ("1.7.2",)  # what CI runs; pyproject.toml pins exactly these


class UntestedAioquic(ImportError):
    pass


def check(version: str | None = None) -> None:
    """Raise :class:`UntestedAioquic` unless ``version`` (default: the installed one) was tested."""
    if version is None:
        if os.environ.get("DISCRETPEER_ANY_AIOQUIC"):
            return
        try:
            version = metadata.version("aioquic")
        except metadata.PackageNotFoundError:
            return  # not installed as a distribution (a vendored copy): nothing to compare
    if version not in TESTED:
        raise UntestedAioquic(
            f"discretpeer was tested with aioquic {', '.join(TESTED)} and relies on its internals; "
            f"aioquic {version} is installed: pip install 'aioquic=={TESTED[-1]}' "
            "(or set DISCRETPEER_ANY_AIOQUIC=1 to try it anyway)"
        )
