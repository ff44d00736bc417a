"""The benchmark's reading of the kernel's UDP counters (benchmarks.run.udp_receive_buffer_errors)."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from benchmarks.run import drops_between, udp_receive_buffer_errors

HEADER = "Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors"


def test_reads_the_receive_buffer_errors_of_the_udp_lines() -> None:
    snmp = f"Ip: Forwarding\nIp: 1\n{HEADER}\nUdp: 1511923 98836 33652 1457999 33650 0 0 244 0\nUdpLite: 0\n"
    assert udp_receive_buffer_errors(snmp) == 33650
    assert udp_receive_buffer_errors(Path("/proc/net/snmp").read_text()) >= 0  # this kernel's own


def test_a_missing_or_garbled_counter_reads_as_zero() -> None:
    assert udp_receive_buffer_errors("") == 0
    assert udp_receive_buffer_errors("Udp: InDatagrams\nUdp: 5\n") == 0
    assert udp_receive_buffer_errors(f"{HEADER}\nUdp: 1 2 3\n") == 0
    assert udp_receive_buffer_errors(f"{HEADER}\nUdp: 1 2 3 4 -5 0\n") == 0


@given(st.text(max_size=300), st.integers(0, 10**12))
def test_any_text_reads_as_a_count_and_a_real_count_survives_noise(noise: str, count: int) -> None:
    assert udp_receive_buffer_errors(noise) >= 0
    snmp = f"{HEADER}\nUdp: 0 0 0 0 {count} 0 0 0 0\n" + noise.replace("Udp:", "")
    assert udp_receive_buffer_errors(snmp) == count


def test_drops_between_names_the_nodes_whose_reader_fell_behind() -> None:
    start = {"qdiscs": 3, "udp_rcvbuf": 10, "udp_rcvbuf beacon": 10, "udp_rcvbuf B1": 0}
    end = {"qdiscs": 3, "udp_rcvbuf": 55, "udp_rcvbuf beacon": 50, "udp_rcvbuf B1": 5}
    assert drops_between(start, end) == {"qdiscs": 0, "udp_rcvbuf": 45, "udp_rcvbuf beacon": 40, "udp_rcvbuf B1": 5}
    assert drops_between(end, end) == {"qdiscs": 0, "udp_rcvbuf": 0}  # the totals stay, quiet nodes go
