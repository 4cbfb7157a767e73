"""The pure domain: aggregates, the rule catalogue (``rules``), policy, clock, hash chain. No Kafka, HTTP or SQL."""

from __future__ import annotations

from services.domain.aggregate import Aggregate, make_projector, natural_id, project_all
from services.domain.clock import Clock, FixedClock, SystemClock
from services.domain.encounter import Encounter, project_encounter
from services.domain.errors import (
    DomainError,
    EncounterNotFound,
    IllegalTransition,
    IntegrityError,
    InvalidCommand,
    NotFound,
    PartyNotEligible,
    PharmacistNotFound,
    PharmacyNotFound,
    PhysicianNotFound,
    PrescriptionNotFound,
    RuleViolation,
    TraceCodeNotFound,
    ValidityElapsed,
)
from services.domain.hashchain import BrokenLink, verify_stream
from services.domain.policy import DEFAULT_RULES, RuleConfig
from services.domain.prescription import Prescription, RxStatus, project_prescription
from services.domain.registries import (
    ChronicDiseaseList,
    DeliveryEnterprise,
    DrugListing,
    EmergencyDeclarations,
    Institution,
    PatientInsurance,
    PatientStatus,
    Pharmacist,
    Pharmacy,
    Physician,
    project_patient_status,
    project_pharmacist,
    project_pharmacy,
    project_physician,
)
from services.domain.rules import RULES, Rule, RuleKind, catalogue
from services.domain.trace_code import TraceCode, project_trace_code

__all__ = [
    "DEFAULT_RULES",
    "RULES",
    "Aggregate",
    "BrokenLink",
    "ChronicDiseaseList",
    "Clock",
    "DeliveryEnterprise",
    "DomainError",
    "DrugListing",
    "EmergencyDeclarations",
    "Encounter",
    "EncounterNotFound",
    "FixedClock",
    "IllegalTransition",
    "Institution",
    "IntegrityError",
    "InvalidCommand",
    "NotFound",
    "PartyNotEligible",
    "PatientInsurance",
    "PatientStatus",
    "Pharmacist",
    "PharmacistNotFound",
    "Pharmacy",
    "PharmacyNotFound",
    "Physician",
    "PhysicianNotFound",
    "Prescription",
    "PrescriptionNotFound",
    "Rule",
    "RuleConfig",
    "RuleKind",
    "RuleViolation",
    "RxStatus",
    "SystemClock",
    "TraceCode",
    "TraceCodeNotFound",
    "ValidityElapsed",
    "catalogue",
    "make_projector",
    "natural_id",
    "project_all",
    "project_encounter",
    "project_patient_status",
    "project_pharmacist",
    "project_pharmacy",
    "project_physician",
    "project_prescription",
    "project_trace_code",
    "verify_stream",
]
