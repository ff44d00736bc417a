"""discretpeer: meet peers through QUIC beacons or the LAN, punch through NATs, verify identities."""
