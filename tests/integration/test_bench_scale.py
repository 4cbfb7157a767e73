"""bench/scale.py at a tiny size: the whole pipeline (write → relay → rebuild → query) runs and reports every figure.

The bench starts its own embedded PostgreSQL and Tansu; this test only checks that it completes and that the
report holds what the README's performance table quotes. Timing is never asserted."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(240)
def test_scale_bench_runs_tiny() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "bench/scale.py", "--events", "1500", "--wave", "100", "--tiny",
                             "--queries", "20"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=230)
    finally:  # the bench's stages, PostgreSQL and Tansu are its children: never leave them running
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, err[-3000:]
    report = json.loads(out)
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
