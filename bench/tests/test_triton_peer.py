"""bench/triton_peer.py's ratios and row (its run against the real tritonserver: `python -m bench.triton_peer`)."""
from __future__ import annotations

from bench.triton_peer import LABEL, _ratios, markdown, triton_peer_row


def run(rps: float, p99: float, cpu: float, errors: int = 0) -> dict:
    return {"rps": rps, "latency_ms": {"p99": p99}, "server_cpu_ms_per_request": cpu, "errors": errors}


def test_ratios_are_medians_of_rounds_and_the_row_says_what_ran():
    ratio = _ratios([run(300, 4, 1.0), run(200, 8, 2.0), run(100, 2, 3.0, errors=1)],
                    [run(100, 2, 2.0), run(100, 2, 2.0), run(100, 2, 2.0)])
    assert ratio["rps_rounds"] == [3.0, 2.0, 1.0] and ratio["rps"] == 2.0 and ratio["p99"] == 2.0
    assert ratio["cpu_ms_per_request"] == 1.0 and ratio["errors"] == {"triton": 1, "server": 0}
    app = {"cold_start_s_median": 2.0, "memory_idle_mib": {"pss": 100.0, "processes": 3},
           "memory_after_mib": {"pss": 120.0}}
    result = {"label": LABEL, "rounds": 3, "seconds": 5.0,
              "apps": {"triton": app, "server": {**app, "cold_start_s_median": 1.0, "memory_after_mib": {"pss": 60.0}}},
              "ratios": {"v2_infer_binary": {"32": ratio}}}
    row = triton_peer_row(result)
    assert row["peer"] == LABEL and "stand-in" in LABEL and row["rps_vs_server"] == 2.0
    assert row["memory_vs_server"] == 2.0 and row["cold_start_vs_server"] == 2.0
    assert "| v2_infer_binary | 32 | 2.00x |" in markdown(result)
