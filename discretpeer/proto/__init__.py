"""The versioned wire formats shared by the beacon and the peers (sans-I/O).

Pure codecs, no sockets, no event loop: the beacon protocol messages (:mod:`.wire`), their
TLS/TCP stream framing (:mod:`.stream_frames`), relay datagrams (:mod:`.relay_frame`), punch
probes (:mod:`.probe`) and the LAN discovery TXT record (:mod:`.lan_txt`). Both sides import
them from here, so a format has one definition; each module carries its own version byte or
field and rejects what it does not know.
"""
