"""The supervisor's restart policy and how it names an exit (services.infra.stack), without starting anything."""

from __future__ import annotations

import signal
from pathlib import Path

from services.infra.settings import Settings, SupervisorSection
from services.infra.stack import backoff_s, exit_reason


def test_backoff_doubles_up_to_its_cap_and_never_gives_up() -> None:
    s = Settings(supervisor=SupervisorSection(backoff_initial_s=0.5, backoff_max_s=8.0))
    assert [backoff_s(s, n) for n in range(7)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert backoff_s(s, 10_000) == 8.0  # the thousandth restart waits as long as the fifth


def test_exit_reason_names_the_signal_or_the_code_and_the_last_exception(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    log.write_text("2026-12-01 00:00:00,000 INFO rxtrail.bootstrap: projections running\n"
                   "Traceback (most recent call last):\n"
                   "  File \"x.py\", line 1, in <module>\n"
                   "aiokafka.errors.CommitFailedError: Commit cannot be completed since the group has rebalanced\n"
                   "2026-12-01 00:00:01,000 INFO rxtrail.bootstrap: projection traceability stopped\n")
    assert exit_reason(1, log) == ("exited with code 1: aiokafka.errors.CommitFailedError: Commit cannot be "
                                   "completed since the group has rebalanced")
    rich = tmp_path / "rich.log"
    rich.write_text("│   490 │   │   raise e.InterfaceError(\n╰────╯\n"
                    "AdminShutdown: terminating connection due to unexpected postmaster exit\n")
    assert exit_reason(1, rich) == "exited with code 1: AdminShutdown: terminating connection due to unexpected " \
                                   "postmaster exit"
    assert exit_reason(-signal.SIGKILL, tmp_path / "none.log") == "killed by SIGKILL"
