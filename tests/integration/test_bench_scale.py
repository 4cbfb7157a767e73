"""bench/scale.py at a tiny size: the whole pipeline (write → relay → rebuild → query) runs and reports every figure.

The bench starts its own embedded PostgreSQL and Tansu; this test only checks that it completes and that the
report holds what the README's performance table quotes. Timing is never asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(240)
def test_scale_bench_runs_tiny() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "bench/scale.py", "--events", "1500", "--wave", "100", "--tiny",
                           "--queries", "20"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=230)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    stages = report["stages"]
    assert stages["generate"]["events"] >= 1500
    assert stages["relay"]["events"] == report["events"]
    full = stages["replay all (full replay)"]
    assert full["events"] == report["events"]
    assert set(full["projections"]) >= {"traceability", "hospital_settlement", "pharmacy_settlement"}
    assert all(stage["peak_rss_mb"] > 0 for stage in stages.values())
    for query in ("trail", "by_trace_code", "by_patient"):
        assert report["queries"][query]["n"] == 20
    assert any(row["table"] == "public.rxtrail_events" for row in report["sizes"])
