"""Tamper evidence: one hash-chain check and one report (``chain``), the verifier over the event store and
``rx.events`` (``verify``), signed checkpoints over the log (``checkpoint``) and offline trail bundles (``bundle``).
Everything reads the event log through ``services.adapters.event_log``."""

from services.integrity.bundle import export_trail, verify_bundle
from services.integrity.chain import Finding, Report, check_stream, stored_event_hash
from services.integrity.checkpoint import create_checkpoint
from services.integrity.verify import verify, verify_aggregate, verify_messages, verify_store

__all__ = [
    "Finding",
    "Report",
    "check_stream",
    "create_checkpoint",
    "export_trail",
    "stored_event_hash",
    "verify",
    "verify_aggregate",
    "verify_bundle",
    "verify_messages",
    "verify_store",
]
