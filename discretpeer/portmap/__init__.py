"""Port mapping: ask the home gateway to forward a public port to our UDP socket.

PCP (RFC 6887) and NAT-PMP (RFC 6886) are sans-I/O codecs here (:mod:`.pcp`, :mod:`.natpmp`);
:mod:`.client` asks the gateway by every protocol at once, keeps the first mapping granted,
renews it before its lifetime ends and deletes it on close.
"""

from discretpeer.portmap.client import Mapping, PortMapper

__all__ = ["Mapping", "PortMapper"]
