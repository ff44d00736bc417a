"""A shell on this device from a web browser, peer to peer (WebRTC data channels, issue 19).

``pairing`` (short code, SPAKE2), ``binding`` (both sides sign this session's DTLS fingerprints),
``browsers`` (the paired browsers file), ``shell`` (PTY sessions), ``device`` (aiortc + signalling).
"""
