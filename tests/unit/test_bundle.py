"""Trail bundles and Merkle proofs, in memory: any change to a bundle's content fails offline verification."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from events import GENESIS_HASH
from services.integrity.bundle import build_bundle, verify_bundle
from services.integrity.chain import stored_event_hash
from services.integrity.checkpoint import (
    PAYLOAD_FORMAT,
    Checkpoint,
    canonical_json,
    leaf_hash,
    merkle_path,
    merkle_root,
    root_from_path,
)

LOG = "rxtrail_events"


def chain(aggregate_id: str, count: int, first_notification: int) -> list[tuple[int, int, str, bytes]]:
    rows, prev = [], GENESIS_HASH
    for v in range(1, count + 1):
        doc = {"originator_id": aggregate_id, "originator_version": v, "timestamp": "2026-11-24T08:00:00Z",
               "schema_version": 1, "business_type": "internet", "prev_hash": prev, "amount": f"{v}.50",
               "drug": "阿莫西林"}
        doc["hash"] = stored_event_hash("PrescriptionNoted", doc)
        prev = doc["hash"]
        rows.append((first_notification + v, v, "events.prescription:PrescriptionNoted",
                     json.dumps(doc, ensure_ascii=False).encode()))
    return rows


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 13])
def test_every_leaf_proves_the_root(n: int) -> None:
    leaves = [leaf_hash(LOG, f"a{i}", i + 1, f"{i:064x}") for i in range(n)]
    root = merkle_root(leaves)
    for i, leaf in enumerate(leaves):
        assert root_from_path(leaf, merkle_path(leaves, i)) == root
        assert root_from_path(leaf_hash(LOG, f"a{i}", i + 2, f"{i:064x}"), merkle_path(leaves, i)) != root


def make_bundle(tmp_path: Path) -> tuple[Path, Ed25519PrivateKey]:
    key = Ed25519PrivateKey.generate()
    rx = str(uuid.UUID(int=7))
    others = [str(uuid.UUID(int=i)) for i in (3, 9, 11)]
    rows = chain(rx, 3, 100)
    head_rows = sorted([(LOG, rx, 3, json.loads(rows[-1][3])["hash"])] +
                       [(LOG, o, 1, f"{i:064x}") for i, o in enumerate(others)])
    leaves = [leaf_hash(*r) for r in head_rows]
    body = {"format": PAYLOAD_FORMAT, "id": 1, "created_at": "2026-11-24T08:00:00+00:00", "key_id": "k",
            "logs": {LOG: {"last_notification_id": 200, "digest": "00" * 32}},
            "merkle_root": merkle_root(leaves).hex(), "leaf_count": len(leaves), "previous": None}
    payload = canonical_json(body)
    checkpoint = Checkpoint(1, payload, key.sign(payload))
    bundle = build_bundle(key, checkpoint, LOG, rx, rows, head_rows, leaves)
    path = tmp_path / "trail.json"
    path.write_bytes(canonical_json(bundle))
    return path, key


def test_a_sound_bundle_verifies(tmp_path: Path) -> None:
    path, key = make_bundle(tmp_path)
    report = verify_bundle(path, trusted_public_key=key.public_key())
    assert report.ok, [str(f) for f in report.findings]
    assert (report.streams, report.events, report.checkpoint_id) == (1, 3, 1)


def test_a_bundle_signed_by_another_key_is_refused(tmp_path: Path) -> None:
    path, _key = make_bundle(tmp_path)
    report = verify_bundle(path, trusted_public_key=Ed25519PrivateKey.generate().public_key())
    assert not report.ok and "not the trusted one" in report.findings[0].reason


def test_every_single_byte_change_fails_or_changes_nothing(tmp_path: Path) -> None:
    path, key = make_bundle(tmp_path)
    raw = path.read_bytes()
    original = json.loads(raw)
    mutated = tmp_path / "mutated.json"
    accepted = []
    for i in range(len(raw)):
        for replacement in {raw[i] ^ 0x01, ord("0") if raw[i] != ord("0") else ord("1")}:
            candidate = raw[:i] + bytes([replacement]) + raw[i + 1:]
            mutated.write_bytes(candidate)
            if verify_bundle(mutated, trusted_public_key=key.public_key()).ok:
                try:
                    same = json.loads(candidate) == original
                except ValueError:
                    same = False
                if not same:
                    accepted.append((i, chr(raw[i]), chr(replacement)))
    assert accepted == []


def test_a_second_spelling_of_a_signature_is_refused(tmp_path: Path) -> None:
    """An Ed25519 signature is 64 bytes: its base64 form ends in a character with 4 unused bits, so several
    spellings decode to the same bytes. Only the canonical one is accepted."""
    path, key = make_bundle(tmp_path)
    bundle = json.loads(path.read_bytes())
    sig = bundle["export_signature"]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    last = alphabet.index(sig[-3])
    bundle["export_signature"] = sig[:-3] + alphabet[last ^ 0b0001] + sig[-2:]
    path.write_bytes(canonical_json(bundle))
    report = verify_bundle(path, trusted_public_key=key.public_key())
    assert not report.ok and any("canonical" in f.reason for f in report.findings)
