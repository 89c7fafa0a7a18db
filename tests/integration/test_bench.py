"""scripts/bench itself keeps working: a tiny run of every tool and the workload kinds, from the venv.

This measures nothing (benchmarks are never asserted in the suite); it checks that the harness starts its
server, runs obsbatch and each installed peer, reaps their processes, and writes its table and chart.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_bench_harness_runs_a_tiny_workload(tmp_path):
    out = tmp_path / "results"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench.py"), "--tiny", "--rounds", "1",
                           "--workloads", "small,wan20-small,noop,scale,restore-small,wan80-restore-large,self", "--out", str(out), "--work",
                           str(tmp_path / "work")],
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((out / "latest.json").read_text())
    tools = {r["tool"] for r in result["summary"]}
    assert {"obsbatch", "s5cmd", "rclone", "aws"} <= tools  # the bench extras are installed by scripts/test
    rows = {(r["workload"], r["tool"]): r for r in result["summary"]}
    for tool in ("obsbatch", "s5cmd", "rclone", "aws"):
        for workload in ("small", "noop"):
            row = rows[(workload, tool)]
            assert row["failed"] == 0 and row["wall_s"] > 0 and row["cpu_s"] > 0, row
    # obsbatch's client CPU includes its workers (reaped by the harness as subreaper), so it exceeds its
    # parent's share; and the no-op rerun uploaded nothing (the harness fails the run otherwise).
    assert rows[("small", "obsbatch")]["rss_tree_mib"] > rows[("small", "obsbatch")]["rss_main_mib"]
    assert rows[("small", "obsbatch")]["ratio_to_best_peer"] is not None
    assert {w for w, _ in rows if w.startswith("scale")} == {"scale-200", "scale-200-busy", "scale-2000",
                                                             "scale-2000-busy"}
    # Through the relay: every tool, with the relay's own CPU measured apart.
    for tool in ("obsbatch", "s5cmd", "rclone", "aws"):
        row = rows[("wan20-small", tool)]
        assert row["failed"] == 0 and row["relay_cpu_s"] is not None, row
    # The download direction (issue #14): every tool brought the whole tree back.
    for tool in ("obsbatch", "s5cmd", "rclone", "aws"):
        assert rows[("restore-small", tool)]["failed"] == 0, rows[("restore-small", tool)]
    # The paced far link (issue #21) and obsbatch's own steps, each step's ratio to the one it follows.
    for tool in ("obsbatch", "s5cmd"):
        assert rows[("wan80-restore-large", tool)]["failed"] == 0, rows[("wan80-restore-large", tool)]
    for step in ("backup", "verify", "restore", "restore-over"):
        assert rows[(f"self:{step}", "obsbatch")]["failed"] == 0, rows[(f"self:{step}", "obsbatch")]
    assert rows[("self:verify", "obsbatch")]["ratio_to_best_peer"] is not None
    assert (out / "latest.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| small | obsbatch |" in proc.stdout
