"""Hard-NAT (birthday) probing in the NAT lab: symmetric ↔ port_restricted, one default beacon
(behaviour port on), ``runs`` meetings; per meeting: did it end direct, introduction → direct (ms),
packets sent by both sides. Blocking (the lab drives namespaces by subprocess)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def birthday_meetings(runs: int, log_dir: Path) -> dict[str, Any]:
    from tests.natlab.lab import Lab, LabUnavailable
    from tests.natlab.test_matrix import BEACON_IP, DELAY_MS, first, run_pair, start_beacon

    try:
        lab = Lab()
    except LabUnavailable as exc:
        raise RuntimeError(f"NAT lab unavailable: {exc}") from None
    workdir = log_dir / "birthday"
    workdir.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = []
    try:
        lab.add_public("beacon", BEACON_IP)
        lab.add_home("A", "symmetric")
        lab.add_home("B", "port_restricted")
        lab.set_delay(DELAY_MS)
        _, entry = start_beacon(lab, workdir)
        for _ in range(runs):
            events_a, events_b = run_pair(lab, workdir, "A1", "B1", entry, payload=1000, hold=4)
            ca = first(events_a, "connected")
            moves = [e for e in events_a if e["event"] == "path" and e["path"] == "direct"]
            introduced = ca["ms_from_start"] - ca["ms"]
            direct_ms = ca["ms"] if ca["path"] == "direct" else (1000 * moves[0]["t"] - introduced if moves else None)
            sa, sb = first(events_a, "done")["stats"], first(events_b, "done")["stats"]
            results.append(
                {
                    "direct": direct_ms is not None,
                    "direct_ms": direct_ms,
                    "first_verified_ms": ca["ms"],
                    "first_path": ca["path"],
                    "packets_symmetric_side": sa["birthday_packets"],
                    "probes_other_side": sb["birthday_packets"],
                    "hit": sa["birthday_hits"],
                }
            )
    finally:
        lab.close()
    return {"meetings": results}


if __name__ == "__main__":
    import json
    import statistics
    import sys
    import tempfile

    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 30
    out = birthday_meetings(runs, Path(tempfile.mkdtemp(prefix="dpb-birthday-")))
    meetings = out["meetings"]
    direct = [m["direct_ms"] for m in meetings if m["direct"]]
    print(json.dumps(out))
    print(
        f"direct {len(direct)}/{len(meetings)}; introduction -> direct p50 "
        f"{statistics.median(direct):.0f} ms, max {max(direct):.0f} ms; packets per attempt: symmetric side "
        f"p50 {statistics.median(m['packets_symmetric_side'] for m in meetings):.0f}, other side p50 "
        f"{statistics.median(m['probes_other_side'] for m in meetings):.0f}"
    )
