"""Patient identity on the write side: keyed pseudonyms and crypto-shredding (001 art. 34; 003 art. 26-27).

- ``pseudonym(secret, national_id)`` is the only patient identifier that shared streams carry: an
  HMAC-SHA256 keyed with a platform secret, so it is stable per patient and useless without the secret.
- Personal fields (name, id number, phone) are sealed with AES-GCM under a key of that patient's own.
  Keys live in the ``patient_keys`` table; ``forget_patient`` deletes them, after which every sealed
  value of that patient is unreadable (``PatientForgotten``) while events, hash chains and totals,
  which only ever carry the sealed bytes, still verify.

A sealed value is the text ``v1.<key_id>.<base64url(nonce || ciphertext)>``; the key id lets a patient
who returns after being forgotten get a fresh key without making the old values readable again. The
patient reference is bound as associated data, so a sealed value moved to another patient fails.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import threading
from collections.abc import Mapping

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from services.application.ports import PatientKeyStore

SEAL_VERSION = "v1"
PERSONAL_FIELDS = ("name", "id_number", "phone")
MIN_SECRET_BYTES = 16


class PrivacyError(Exception):
    """Base class of this module's errors; messages never contain personal data."""


class PatientForgotten(PrivacyError):
    """The patient's key was deleted (crypto-shredding): sealed fields can no longer be read."""

    def __init__(self, patient_ref: str, key_id: str) -> None:
        super().__init__(f"patient {patient_ref} was forgotten: key {key_id} is shredded, sealed fields are unreadable")
        self.patient_ref = patient_ref
        self.key_id = key_id


class SealBroken(PrivacyError):
    """A sealed value is malformed, belongs to another patient, or was altered."""


def pseudonym(secret: bytes, national_id: str) -> str:
    """The patient's stable pseudonym (hex HMAC-SHA256 of the normalised national id)."""
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError(f"the pseudonym secret must be at least {MIN_SECRET_BYTES} bytes")
    normalised = national_id.strip().upper().encode()
    if not normalised:
        raise ValueError("national_id is empty")
    return hmac.new(secret, normalised, hashlib.sha256).hexdigest()


class InMemoryPatientKeyStore:
    """For unit tests and tools that run without a database; same behaviour as the PostgreSQL store."""

    def __init__(self) -> None:
        self._keys: dict[str, dict[str, bytes]] = {}
        self._lock = threading.Lock()

    def key_for_sealing(self, patient_ref: str) -> tuple[str, bytes]:
        with self._lock:
            keys = self._keys.setdefault(patient_ref, {})
            if not keys:
                keys[os.urandom(8).hex()] = AESGCM.generate_key(bit_length=256)
            key_id, key = next(iter(keys.items()))
            return key_id, key

    def key(self, patient_ref: str, key_id: str) -> bytes | None:
        with self._lock:
            return self._keys.get(patient_ref, {}).get(key_id)

    def forget(self, patient_ref: str) -> int:
        with self._lock:
            return len(self._keys.pop(patient_ref, {}))

    def close(self) -> None:
        pass


class PatientVault:
    """Seals and unseals a patient's personal fields and forgets patients."""

    def __init__(self, secret: bytes, keys: PatientKeyStore) -> None:
        if len(secret) < MIN_SECRET_BYTES:
            raise ValueError(f"the pseudonym secret must be at least {MIN_SECRET_BYTES} bytes")
        self._secret = secret
        self.keys = keys

    def patient_ref(self, national_id: str) -> str:
        return pseudonym(self._secret, national_id)

    def address_ref(self, address: str) -> str:
        """A delivery address's keyed pseudonym (case and spacing normalised; a separate domain from patients),
        so deliveries to one address can be counted without the address ever being recorded."""
        return pseudonym(self._secret, "address:" + " ".join(address.split()).casefold())

    def seal(self, patient_ref: str, fields: Mapping[str, str]) -> str:
        unknown = set(fields) - set(PERSONAL_FIELDS)
        if unknown:
            raise ValueError(f"not personal fields: {sorted(unknown)}")
        key_id, key = self.keys.key_for_sealing(patient_ref)
        nonce = os.urandom(12)
        plaintext = json.dumps(dict(fields), ensure_ascii=False, sort_keys=True).encode()
        sealed = AESGCM(key).encrypt(nonce, plaintext, _aad(patient_ref, key_id))
        return f"{SEAL_VERSION}.{key_id}.{base64.urlsafe_b64encode(nonce + sealed).decode()}"

    def unseal(self, patient_ref: str, sealed: str) -> dict[str, str]:
        try:
            version, key_id, body = sealed.split(".", 2)
            blob = base64.urlsafe_b64decode(body.encode())
        except (ValueError, TypeError) as exc:
            raise SealBroken("sealed value is malformed") from exc
        if version != SEAL_VERSION or len(blob) < 12 + 16:
            raise SealBroken(f"sealed value has unknown version {version!r} or is truncated")
        key = self.keys.key(patient_ref, key_id)
        if key is None:
            raise PatientForgotten(patient_ref, key_id)
        try:
            plaintext = AESGCM(key).decrypt(blob[:12], blob[12:], _aad(patient_ref, key_id))
        except InvalidTag as exc:
            raise SealBroken(f"sealed value does not belong to patient {patient_ref} or was altered") from exc
        return dict(json.loads(plaintext))

    def forget_patient(self, patient_ref: str) -> int:
        """Crypto-shredding: delete the patient's keys. Returns the number of keys deleted."""
        return self.keys.forget(patient_ref)

    def close(self) -> None:
        self.keys.close()


def _aad(patient_ref: str, key_id: str) -> bytes:
    return f"rxtrail.patient.{SEAL_VERSION}|{patient_ref}|{key_id}".encode()


def forget_patient(vault: PatientVault, patient_ref: str) -> int:
    return vault.forget_patient(patient_ref)
