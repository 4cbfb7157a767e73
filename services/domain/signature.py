"""R2: the physician's e-signature over a prescription's canonical content (Ed25519).

处方电子签名。The content signed is defined here once: the hospital and its prescription number, the visit it comes
from (the encounter id binds the patient, the diagnosis and the physician of the recorded visit), the physician, the
diagnosis, every item as prescribed, the justification (R5) and the patient's chosen pharmacy. The patient's
pseudonym is not in it: the hospital's system never knows it (the platform's vault derives it), and the encounter id
already names the patient. A signature is the hex of Ed25519's 64 bytes; a public key is the hex of its 32 raw bytes.

The HIS (and the tests, the demo) sign with :func:`sign_prescription`; the domain verifies with
:func:`verifies`. Any change to what was prescribed (a quantity, a day of supply, a price, another visit) breaks the
signature.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any
from uuid import UUID

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from events.prescription import PrescriptionItem

CONTENT_TAG = "rxtrail/prescription/v1"
"""The first field of the content: a signature over another kind of document never verifies as a prescription."""


def prescription_content(
    *,
    hospital_id: str,
    prescription_ref: str,
    encounter_id: UUID | str,
    physician_id: str,
    diagnosis_code: str,
    items: Sequence[PrescriptionItem],
    justification: str | None = None,
    preferred_pharmacy_id: str | None = None,
) -> bytes:
    """The canonical bytes of a prescription: UTF-8 JSON, keys sorted, no whitespace, items in the order given."""
    document = {
        "tag": CONTENT_TAG,
        "hospital_id": hospital_id,
        "prescription_ref": prescription_ref,
        "encounter_id": str(encounter_id),
        "physician_id": physician_id,
        "diagnosis_code": diagnosis_code,
        "items": [item.model_dump(mode="json") for item in items],
        "justification": justification.strip() if justification and justification.strip() else None,
        "preferred_pharmacy_id": preferred_pharmacy_id,
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sign_prescription(private_key: Ed25519PrivateKey, **content: object) -> str:
    """The hex signature of :func:`prescription_content` (keyword arguments as there)."""
    return private_key.sign(prescription_content(**content)).hex()  # type: ignore[arg-type]


def sign_prescription_request(
    private_key: Ed25519PrivateKey,
    body: Mapping[str, Any],
    *,
    hospital_id: str,
    physician_id: str,
    diagnosis_code: str,
) -> str:
    """The signature for an ``IssuePrescription`` request body in its JSON form (``prescription_ref``,
    ``encounter_id``, ``items``, optional ``justification`` / ``preferred_pharmacy_id``), as the hospital's system
    signs it with the physician of the visit, whose diagnosis it carries."""
    return sign_prescription(
        private_key,
        hospital_id=hospital_id,
        prescription_ref=body["prescription_ref"],
        encounter_id=body["encounter_id"],
        physician_id=physician_id,
        diagnosis_code=diagnosis_code,
        items=[PrescriptionItem.model_validate(i) for i in body["items"]],
        justification=body.get("justification"),
        preferred_pharmacy_id=body.get("preferred_pharmacy_id"),
    )


def public_key_hex(private_key: Ed25519PrivateKey) -> str:
    """The registered form of a key: the 32 raw public bytes in hex (64 characters)."""
    return private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()


def verifies(public_key: str | None, signature: str, content: bytes) -> bool:
    """True when ``signature`` (hex) is the Ed25519 signature of ``content`` under ``public_key`` (hex)."""
    if not public_key:
        return False
    try:
        key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_key))
        key.verify(bytes.fromhex(signature.strip()), content)
    except (ValueError, InvalidSignature):
        return False
    return True
