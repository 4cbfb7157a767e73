"""The checkpoint chain against copies held elsewhere (pure: no database): a copy the database lacks or holds
differently is a finding, the copy wins; ids must run without gaps and each checkpoint must link to the one
before; the report says what no checkpoint covers and names findings by stream, version and checkpoint."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.integrity.chain import Finding, Report
from services.integrity.checkpoint import PAYLOAD_FORMAT, Checkpoint, canonical_json, check_chain, reconcile
from services.integrity.witness import from_record, load_witness, message_key, record

KEY = Ed25519PrivateKey.generate()
LOG = "rxtrail_events"


def signed(cid: int, previous: Checkpoint | None, last: int, *, key: Ed25519PrivateKey = KEY,
           note: str = "") -> Checkpoint:
    body = {"format": PAYLOAD_FORMAT, "id": cid, "created_at": f"2026-11-30T00:0{cid}:00+00:00{note}",
            "key_id": "k", "logs": {LOG: {"last_notification_id": last, "digest": "00" * 32}},
            "merkle_root": "11" * 32, "leaf_count": 1,
            "previous": hashlib.sha256(previous.payload).hexdigest() if previous else None}
    payload = canonical_json(body)
    return Checkpoint(cid, payload, key.sign(payload))


def chain_of(n: int) -> list[Checkpoint]:
    out: list[Checkpoint] = []
    for i in range(1, n + 1):
        out.append(signed(i, out[-1] if out else None, 10 * i))
    return out


def reasons(report: Report) -> list[tuple[int | None, str]]:
    return [(f.checkpoint, f.reason.split(":")[0]) for f in report.findings]


def test_an_intact_chain_and_its_copies_agree() -> None:
    chain = chain_of(3)
    report = Report()
    merged = reconcile(chain, [("rx.checkpoints", c) for c in chain], KEY.public_key(), report)
    check_chain(merged, KEY.public_key(), report)
    assert report.ok and merged == chain
    assert report.checkpoint_copies == {"rx.checkpoints": 3}


def test_a_deleted_latest_checkpoint_comes_back_from_its_copy() -> None:
    chain = chain_of(3)
    report = Report()
    merged = reconcile(chain[:2], [("witness file", c) for c in chain], KEY.public_key(), report)
    check_chain(merged, KEY.public_key(), report)
    assert merged == chain
    assert reasons(report) == [(3, "deleted")]


def test_an_altered_or_remade_checkpoint_is_found_and_the_first_copy_wins() -> None:
    chain = chain_of(2)
    remade = signed(1, None, 10, note=" ")
    report = Report()
    merged = reconcile([remade, chain[1]], [("rx.checkpoints", chain[0]), ("rx.checkpoints", remade)],
                       KEY.public_key(), report)
    assert merged == chain
    assert sorted(reasons(report)) == [(1, "altered"), (1, "rx.checkpoints holds two different checkpoints #1")]


def test_a_copy_signed_by_another_key_is_not_trusted() -> None:
    stranger = signed(1, None, 10, key=Ed25519PrivateKey.generate())
    report = Report()
    assert reconcile([], [("rx.checkpoints", stranger)], KEY.public_key(), report) == []
    assert reasons(report) == [(1, "the copy from rx.checkpoints is not signed by the data dir's key")]


def test_gaps_and_broken_links_in_the_chain() -> None:
    chain = chain_of(4)
    report = Report()
    check_chain([chain[0], chain[2], chain[3]], KEY.public_key(), report)
    assert reasons(report) == [(3, "checkpoint(s) #2 before it are missing (deleted)")]

    unlinked = signed(2, None, 20)
    report = Report()
    check_chain([chain[0], unlinked], KEY.public_key(), report)
    assert reasons(report) == [(2, "does not chain to the checkpoint before it")]

    forged = Checkpoint(2, chain[1].payload, b"\0" * 64)
    report = Report()
    check_chain([chain[0], forged], KEY.public_key(), report)
    assert reasons(report) == [(2, "signature does not verify with the key in the data dir")]


def test_records_round_trip_and_a_witness_file_is_a_list(tmp_path: Path) -> None:
    chain = chain_of(2)
    assert [from_record(record(c)) for c in chain] == chain
    assert message_key(chain[0]) == LOG.encode()
    path = tmp_path / "kept.json"
    path.write_text(json.dumps([record(c) for c in chain]))
    assert load_witness(path) == chain
    path.write_text(json.dumps({"checkpoints": [record(chain[0])]}))
    assert load_witness(path) == chain[:1]


def test_findings_name_stream_version_and_checkpoint_and_the_summary_says_what_is_not_covered() -> None:
    assert str(Finding("checkpoint", "rx-1", 3, "rewritten", checkpoint=2)) == "[checkpoint] rx-1 v3 (checkpoint #2): rewritten"
    assert str(Finding("checkpoint", "", 0, "deleted", checkpoint=4)) == "[checkpoint] checkpoint #4: deleted"
    assert str(Finding("store", "rx-1", 2, "hash does not match")) == "[store] rx-1 v2: hash does not match"
    report = Report(streams=2, events=9, checkpoints=1, latest_checkpoint=1, latest_checkpoint_at="t",
                    uncovered_events=4, uncovered_streams=2, checkpoint_copies={"rx.checkpoints": 1})
    summary = report.summary()
    assert "latest checkpoint #1 (t); 4 events in 2 streams not yet covered" in summary
    assert "1 checkpoint copies from rx.checkpoints compared" in summary and summary.endswith("INTACT")
    assert "no checkpoint covers the store: 9 events in 2 streams" in Report(
        streams=2, events=9, uncovered_events=9, uncovered_streams=2).summary()
