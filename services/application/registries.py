"""Registry command handlers: the authority changes its facts (issue 13, R17; services/domain/registries.py).

``RxTrail`` dispatches every ``commands.REGISTRY_COMMANDS`` command here (``REGISTRY_HANDLERS``). Each handler checks
that the sender (``changed_by``) may change the fact, then records the change on the registry aggregate:

- the agency of the fact's pooling region (``agency:<region>``) changes the facts of its region: institutions,
  physicians and pharmacists of its institutions, cooperation agreements with its hospitals, pharmacies, delivery
  enterprises, its insured patients (insurance facts, entitlements, 备案, fraud suspension), its chronic-disease list,
  payment standards and price caps in its region, its emergency declarations;
- the regulator (``regulator:<id>``) keeps the national drug catalog (listing, category, chronic list) and may also
  set payment standards and price caps, chronic-disease lists and emergency declarations of any region;
- reference data loaded as events (``seed:<version>``, ``rxtrail registry seed``) may set anything.

Another sender is refused with ``Forbidden`` (HTTP 403) naming what it may not do.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any, Protocol
from uuid import UUID

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from services.application import commands as c
from services.application.access import Forbidden, Party, PartyKind
from services.application.privacy import PatientVault
from services.application.unit_of_work import UnitOfWork
from services.domain.clock import Clock
from services.domain.errors import InvalidCommand
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
)

SEED = "seed"
"""``changed_by`` kind of reference data loaded as events."""


class Registrar(Protocol):
    """What a registry handler needs of the application (``RxTrail``)."""

    clock: Clock
    vault: PatientVault


RegistryHandler = Callable[[Any, Any, UnitOfWork], UUID]
REGISTRY_HANDLERS: dict[type[c.Command], RegistryHandler] = {}


def _handles(command_type: type[c.RegistryCommand]) -> Callable[[RegistryHandler], RegistryHandler]:
    def register(func: RegistryHandler) -> RegistryHandler:
        REGISTRY_HANDLERS[command_type] = func
        return func

    return register


# --- who may change what ----------------------------------------------------------------------------------------


def sender(changed_by: str) -> tuple[str, str]:
    kind, _, who = changed_by.partition(":")
    if not who:
        raise InvalidCommand("changed_by names the acting party as kind:id (agency:370100, regulator:R-1)",
                             changed_by=changed_by)
    return kind, who


def authorise(changed_by: str, region: str | None, what: str, *, regulator: bool = False) -> None:
    """Refuse (``Forbidden``) unless ``changed_by`` may change a fact of ``region`` (None: a fact no region owns
    yet, e.g. a record written before facts had regions — any agency). ``regulator``: the regulator may too."""
    kind, who = sender(changed_by)
    if kind == SEED:
        return
    if kind == PartyKind.AGENCY.value and (region is None or who == region):
        return
    if kind == PartyKind.REGULATOR.value and regulator:
        return
    try:
        party = Party(PartyKind(kind), who)
    except ValueError:
        raise InvalidCommand(f"changed_by {changed_by!r} is not an agency, a regulator or a seed",
                             changed_by=changed_by) from None
    where = f" of region {region}" if region is not None else ""
    raise Forbidden(party, f"{what}{where}")


def national(changed_by: str, what: str) -> None:
    """The national catalog: the regulator (or a seed)."""
    kind, who = sender(changed_by)
    if kind in (SEED, PartyKind.REGULATOR.value):
        return
    try:
        party = Party(PartyKind(kind), who)
    except ValueError:
        raise InvalidCommand(f"changed_by {changed_by!r} is not an agency, a regulator or a seed",
                             changed_by=changed_by) from None
    raise Forbidden(party, f"{what} (the national catalog is the regulator's)")


# --- institutions -----------------------------------------------------------------------------------------------


def _institution(uow: UnitOfWork, institution_id: str) -> Institution:
    return uow.require(Institution, Institution.id_for(institution_id), key=institution_id)


@_handles(c.RegisterInstitution)
def _register_institution(app: Registrar, cmd: c.RegisterInstitution, uow: UnitOfWork) -> UUID:
    authorise(cmd.changed_by, cmd.region, "register an institution")
    aggregate_id = Institution.id_for(cmd.institution_id)
    uow.expect_new(Institution, aggregate_id, "institution", cmd.institution_id)
    physical = None
    if cmd.physical_institution_id is not None:
        physical = _institution(uow, cmd.physical_institution_id)
    uow.add(Institution.register(
        clock=app.clock, changed_by=cmd.changed_by, institution_id=cmd.institution_id, name=cmd.name,
        kind=cmd.institution_kind, ownership=cmd.ownership, level=cmd.level, region=cmd.region,
        agreement_no=cmd.agreement_no, physical=physical, effective_from=cmd.effective_from))
    return aggregate_id


@_handles(c.ChangeInstitution)
def _change_institution(app: Registrar, cmd: c.ChangeInstitution, uow: UnitOfWork) -> UUID:
    institution = _institution(uow, cmd.institution_id)
    authorise(cmd.changed_by, institution.region, "change an institution")
    institution.change(clock=app.clock, changed_by=cmd.changed_by, name=cmd.name, ownership=cmd.ownership,
                       level=cmd.level, effective_from=cmd.effective_from)
    return institution.id


@_handles(c.SuspendInstitutionAgreement)
def _suspend_institution(app: Registrar, cmd: c.SuspendInstitutionAgreement, uow: UnitOfWork) -> UUID:
    institution = _institution(uow, cmd.institution_id)
    authorise(cmd.changed_by, institution.region, "suspend an institution's agreement")
    institution.suspend_agreement(clock=app.clock, changed_by=cmd.changed_by, reason=cmd.reason,
                                  effective_from=cmd.effective_from)
    return institution.id


@_handles(c.ReinstateInstitutionAgreement)
def _reinstate_institution(app: Registrar, cmd: c.ReinstateInstitutionAgreement, uow: UnitOfWork) -> UUID:
    institution = _institution(uow, cmd.institution_id)
    authorise(cmd.changed_by, institution.region, "reinstate an institution's agreement")
    institution.reinstate_agreement(clock=app.clock, changed_by=cmd.changed_by, reason=cmd.reason,
                                    effective_from=cmd.effective_from)
    return institution.id


# --- physicians -------------------------------------------------------------------------------------------------


def _physician(uow: UnitOfWork, physician_id: str, changed_by: str, what: str) -> Physician:
    physician = uow.require(Physician, Physician.id_for(physician_id), key=physician_id)
    hospital = uow.get(Institution, Institution.id_for(physician.hospital_id))
    authorise(changed_by, None if hospital is None else hospital.region, what)
    return physician


@_handles(c.RegisterPhysician)
def _register_physician(app: Registrar, cmd: c.RegisterPhysician, uow: UnitOfWork) -> UUID:
    hospital = _institution(uow, cmd.hospital_id)
    authorise(cmd.changed_by, hospital.region, "register a physician")
    aggregate_id = Physician.id_for(cmd.physician_id)
    uow.expect_new(Physician, aggregate_id, "physician", cmd.physician_id)
    uow.add(Physician.register(
        clock=app.clock, changed_by=cmd.changed_by, physician_id=cmd.physician_id, hospital_id=cmd.hospital_id,
        name=cmd.name, qualification_no=cmd.qualification_no, physician_code=cmd.physician_code,
        public_key=cmd.public_key, effective_from=cmd.effective_from))
    return aggregate_id


@_handles(c.SuspendPhysician)
def _suspend_physician(app: Registrar, cmd: c.SuspendPhysician, uow: UnitOfWork) -> UUID:
    physician = _physician(uow, cmd.physician_id, cmd.changed_by, "suspend a physician")
    physician.suspend(clock=app.clock, changed_by=cmd.changed_by, reason=cmd.reason,
                      effective_from=cmd.effective_from)
    return physician.id


@_handles(c.ReinstatePhysician)
def _reinstate_physician(app: Registrar, cmd: c.ReinstatePhysician, uow: UnitOfWork) -> UUID:
    physician = _physician(uow, cmd.physician_id, cmd.changed_by, "reinstate a physician")
    physician.reinstate(clock=app.clock, changed_by=cmd.changed_by, reason=cmd.reason,
                        effective_from=cmd.effective_from)
    return physician.id


@_handles(c.ChangePhysicianKey)
def _change_physician_key(app: Registrar, cmd: c.ChangePhysicianKey, uow: UnitOfWork) -> UUID:
    physician = _physician(uow, cmd.physician_id, cmd.changed_by, "change a physician's key")
    physician.change_key(clock=app.clock, changed_by=cmd.changed_by, public_key=cmd.public_key,
                         effective_from=cmd.effective_from)
    return physician.id


# --- pharmacists ------------------------------------------------------------------------------------------------


def _pharmacist_region(uow: UnitOfWork, pharmacist: Pharmacist) -> str | None:
    if pharmacist.employer_id is not None:
        employer = uow.get(Institution, Institution.id_for(pharmacist.employer_id))
        if employer is not None:
            return employer.region
    return pharmacist.region


def _pharmacist(uow: UnitOfWork, pharmacist_id: str, changed_by: str, what: str) -> Pharmacist:
    pharmacist = uow.require(Pharmacist, Pharmacist.id_for(pharmacist_id), key=pharmacist_id)
    authorise(changed_by, _pharmacist_region(uow, pharmacist), what)
    return pharmacist


@_handles(c.RegisterPharmacist)
def _register_pharmacist(app: Registrar, cmd: c.RegisterPharmacist, uow: UnitOfWork) -> UUID:
    if cmd.employer_id is not None:
        region: str | None = _institution(uow, cmd.employer_id).region
        if cmd.region is not None and cmd.region != region:
            raise InvalidCommand("an employed pharmacist is in its employer's region", region=region)
    elif cmd.region is None:
        raise InvalidCommand("a third-party pharmacist names the pooling region registering it",
                             pharmacist_id=cmd.pharmacist_id)
    else:
        region = cmd.region
    authorise(cmd.changed_by, region, "register a pharmacist")
    aggregate_id = Pharmacist.id_for(cmd.pharmacist_id)
    uow.expect_new(Pharmacist, aggregate_id, "pharmacist", cmd.pharmacist_id)
    uow.add(Pharmacist.register(
        clock=app.clock, changed_by=cmd.changed_by, pharmacist_id=cmd.pharmacist_id, name=cmd.name,
        qualification_no=cmd.qualification_no, employer_id=cmd.employer_id, third_party=cmd.third_party,
        company_id=cmd.company_id, region=region, effective_from=cmd.effective_from))
    return aggregate_id


@_handles(c.RecordCooperationAgreement)
def _record_cooperation(app: Registrar, cmd: c.RecordCooperationAgreement, uow: UnitOfWork) -> UUID:
    """R18: the agency of the hospital's region records the agreement."""
    hospital = _institution(uow, cmd.hospital_id)
    authorise(cmd.changed_by, hospital.region, "record a cooperation agreement with a hospital")
    pharmacist = uow.require(Pharmacist, Pharmacist.id_for(cmd.pharmacist_id), key=cmd.pharmacist_id)
    pharmacist.record_agreement(clock=app.clock, changed_by=cmd.changed_by, hospital_id=cmd.hospital_id,
                                agreement_no=cmd.agreement_no, effective_from=cmd.effective_from)
    return pharmacist.id


@_handles(c.EndCooperationAgreement)
def _end_cooperation(app: Registrar, cmd: c.EndCooperationAgreement, uow: UnitOfWork) -> UUID:
    hospital = uow.get(Institution, Institution.id_for(cmd.hospital_id))
    authorise(cmd.changed_by, None if hospital is None else hospital.region,
              "end a cooperation agreement with a hospital")
    pharmacist = uow.require(Pharmacist, Pharmacist.id_for(cmd.pharmacist_id), key=cmd.pharmacist_id)
    pharmacist.end_agreement(clock=app.clock, changed_by=cmd.changed_by, hospital_id=cmd.hospital_id,
                             reason=cmd.reason, effective_from=cmd.effective_from)
    return pharmacist.id


@_handles(c.SuspendPharmacist)
def _suspend_pharmacist(app: Registrar, cmd: c.SuspendPharmacist, uow: UnitOfWork) -> UUID:
    pharmacist = _pharmacist(uow, cmd.pharmacist_id, cmd.changed_by, "suspend a pharmacist")
    pharmacist.suspend(clock=app.clock, changed_by=cmd.changed_by, reason=cmd.reason,
                       effective_from=cmd.effective_from)
    return pharmacist.id


@_handles(c.ReinstatePharmacist)
def _reinstate_pharmacist(app: Registrar, cmd: c.ReinstatePharmacist, uow: UnitOfWork) -> UUID:
    pharmacist = _pharmacist(uow, cmd.pharmacist_id, cmd.changed_by, "reinstate a pharmacist")
    pharmacist.reinstate(clock=app.clock, changed_by=cmd.changed_by, reason=cmd.reason,
                         effective_from=cmd.effective_from)
    return pharmacist.id


# --- pharmacies -------------------------------------------------------------------------------------------------


def _pharmacy(uow: UnitOfWork, pharmacy_id: str, changed_by: str, what: str) -> Pharmacy:
    pharmacy = uow.require(Pharmacy, Pharmacy.id_for(pharmacy_id), key=pharmacy_id)
    authorise(changed_by, pharmacy.pooling_region, what)
    return pharmacy


@_handles(c.DesignatePharmacy)
def _designate_pharmacy(app: Registrar, cmd: c.DesignatePharmacy, uow: UnitOfWork) -> UUID:
    authorise(cmd.changed_by, cmd.pooling_region, "designate a pharmacy")
    aggregate_id = Pharmacy.id_for(cmd.pharmacy_id)
    uow.expect_new(Pharmacy, aggregate_id, "pharmacy", cmd.pharmacy_id)
    uow.add(Pharmacy.designate(
        clock=app.clock, changed_by=cmd.changed_by, pharmacy_id=cmd.pharmacy_id, name=cmd.name,
        pooling_region=cmd.pooling_region, agreement_no=cmd.agreement_no, ownership=cmd.ownership,
        drug_codes=cmd.drug_codes, chronic_qualified=cmd.chronic_qualified, payee_id=cmd.payee_id,
        effective_from=cmd.effective_from))
    return aggregate_id


@_handles(c.SuspendPharmacyAgreement)
def _suspend_pharmacy(app: Registrar, cmd: c.SuspendPharmacyAgreement, uow: UnitOfWork) -> UUID:
    pharmacy = _pharmacy(uow, cmd.pharmacy_id, cmd.changed_by, "suspend a pharmacy's agreement")
    pharmacy.suspend_agreement(clock=app.clock, changed_by=cmd.changed_by, reason=cmd.reason,
                               effective_from=cmd.effective_from)
    return pharmacy.id


@_handles(c.ReinstatePharmacyAgreement)
def _reinstate_pharmacy(app: Registrar, cmd: c.ReinstatePharmacyAgreement, uow: UnitOfWork) -> UUID:
    pharmacy = _pharmacy(uow, cmd.pharmacy_id, cmd.changed_by, "reinstate a pharmacy's agreement")
    pharmacy.reinstate_agreement(clock=app.clock, changed_by=cmd.changed_by, reason=cmd.reason,
                                 effective_from=cmd.effective_from)
    return pharmacy.id


@_handles(c.ListPharmacyDrugs)
def _list_pharmacy_drugs(app: Registrar, cmd: c.ListPharmacyDrugs, uow: UnitOfWork) -> UUID:
    pharmacy = _pharmacy(uow, cmd.pharmacy_id, cmd.changed_by, "change a pharmacy's drug list")
    pharmacy.list_drugs(clock=app.clock, changed_by=cmd.changed_by, drug_codes=cmd.drug_codes,
                        effective_from=cmd.effective_from)
    return pharmacy.id


@_handles(c.DelistPharmacyDrugs)
def _delist_pharmacy_drugs(app: Registrar, cmd: c.DelistPharmacyDrugs, uow: UnitOfWork) -> UUID:
    pharmacy = _pharmacy(uow, cmd.pharmacy_id, cmd.changed_by, "change a pharmacy's drug list")
    pharmacy.delist_drugs(clock=app.clock, changed_by=cmd.changed_by, drug_codes=cmd.drug_codes,
                          effective_from=cmd.effective_from)
    return pharmacy.id


@_handles(c.SetPharmacyChronicQualification)
def _pharmacy_chronic(app: Registrar, cmd: c.SetPharmacyChronicQualification, uow: UnitOfWork) -> UUID:
    pharmacy = _pharmacy(uow, cmd.pharmacy_id, cmd.changed_by, "change a pharmacy's chronic-disease qualification")
    pharmacy.set_chronic_qualification(clock=app.clock, changed_by=cmd.changed_by, qualified=cmd.qualified,
                                       effective_from=cmd.effective_from)
    return pharmacy.id


@_handles(c.ChangePharmacyPayee)
def _pharmacy_payee(app: Registrar, cmd: c.ChangePharmacyPayee, uow: UnitOfWork) -> UUID:
    pharmacy = _pharmacy(uow, cmd.pharmacy_id, cmd.changed_by, "change a pharmacy's payee")
    pharmacy.change_payee(clock=app.clock, changed_by=cmd.changed_by, payee_id=cmd.payee_id,
                          effective_from=cmd.effective_from)
    return pharmacy.id


# --- delivery enterprises ---------------------------------------------------------------------------------------


@_handles(c.RegisterDeliveryEnterprise)
def _register_delivery(app: Registrar, cmd: c.RegisterDeliveryEnterprise, uow: UnitOfWork) -> UUID:
    authorise(cmd.changed_by, cmd.region, "register a delivery enterprise")
    aggregate_id = DeliveryEnterprise.id_for(cmd.enterprise_id)
    uow.expect_new(DeliveryEnterprise, aggregate_id, "delivery enterprise", cmd.enterprise_id)
    uow.add(DeliveryEnterprise.register(
        clock=app.clock, changed_by=cmd.changed_by, enterprise_id=cmd.enterprise_id, name=cmd.name,
        region=cmd.region, gsp_qualified=cmd.gsp_qualified, gsp_certificate_no=cmd.gsp_certificate_no,
        effective_from=cmd.effective_from))
    return aggregate_id


@_handles(c.ChangeDeliveryEnterpriseGsp)
def _delivery_gsp(app: Registrar, cmd: c.ChangeDeliveryEnterpriseGsp, uow: UnitOfWork) -> UUID:
    enterprise = uow.require(DeliveryEnterprise, DeliveryEnterprise.id_for(cmd.enterprise_id), key=cmd.enterprise_id)
    authorise(cmd.changed_by, enterprise.region, "change a delivery enterprise's GSP qualification")
    enterprise.change_gsp(clock=app.clock, changed_by=cmd.changed_by, gsp_qualified=cmd.gsp_qualified,
                          gsp_certificate_no=cmd.gsp_certificate_no, reason=cmd.reason,
                          effective_from=cmd.effective_from)
    return enterprise.id


# --- patients ---------------------------------------------------------------------------------------------------


def patient_ref_of(app: Registrar, cmd: c._PatientKey) -> str:
    """The pseudonym: given, or made from the national id by the vault (the national id is never recorded)."""
    if cmd.patient_ref is not None:
        return cmd.patient_ref
    if cmd.patient_national_id is None:
        raise ValueError("patient command without a patient key")  # the command model makes this unreachable
    return app.vault.patient_ref(cmd.patient_national_id)


def _insurance(app: Registrar, cmd: c._PatientKey, uow: UnitOfWork, what: str) -> PatientInsurance:
    ref = patient_ref_of(app, cmd)
    insurance = uow.require(PatientInsurance, PatientInsurance.id_for(ref), key="(the patient given)")
    authorise(cmd.changed_by, insurance.insured_region, what)
    return insurance


def _insured_region(app: Registrar, ref: str, uow: UnitOfWork) -> str | None:
    insurance = uow.get(PatientInsurance, PatientInsurance.id_for(ref))
    return None if insurance is None else insurance.insured_region


@_handles(c.SuspendPatientForFraud)
def _suspend_patient(app: Registrar, cmd: c.SuspendPatientForFraud, uow: UnitOfWork) -> UUID:
    ref = patient_ref_of(app, cmd)
    authorise(cmd.changed_by, _insured_region(app, ref, uow), "suspend a patient")
    existing = uow.get(PatientStatus, PatientStatus.id_for(ref))
    status = PatientStatus.suspend_for_fraud(existing, clock=app.clock, changed_by=cmd.changed_by, patient_ref=ref,
                                             reason=cmd.reason, until=cmd.until)
    uow.add(status)
    return status.id


@_handles(c.ReinstatePatient)
def _reinstate_patient(app: Registrar, cmd: c.ReinstatePatient, uow: UnitOfWork) -> UUID:
    ref = patient_ref_of(app, cmd)
    authorise(cmd.changed_by, _insured_region(app, ref, uow), "reinstate a patient")
    status = uow.require(PatientStatus, PatientStatus.id_for(ref), key="(the patient given)")
    status.reinstate(clock=app.clock, changed_by=cmd.changed_by, reason=cmd.reason)
    return status.id


@_handles(c.RegisterPatientInsurance)
def _register_insurance(app: Registrar, cmd: c.RegisterPatientInsurance, uow: UnitOfWork) -> UUID:
    authorise(cmd.changed_by, cmd.insured_region, "register a patient's insurance")
    ref = patient_ref_of(app, cmd)
    aggregate_id = PatientInsurance.id_for(ref)
    uow.expect_new(PatientInsurance, aggregate_id, "patient insurance", "(the patient given)")
    uow.add(PatientInsurance.register(clock=app.clock, changed_by=cmd.changed_by, patient_ref=ref,
                                      insured_region=cmd.insured_region, insurance_type=cmd.insurance_type,
                                      effective_from=cmd.effective_from))
    return aggregate_id


@_handles(c.ChangePatientInsurance)
def _change_insurance(app: Registrar, cmd: c.ChangePatientInsurance, uow: UnitOfWork) -> UUID:
    insurance = _insurance(app, cmd, uow, "change a patient's insurance")
    insurance.change(clock=app.clock, changed_by=cmd.changed_by, insured_region=cmd.insured_region,
                     insurance_type=cmd.insurance_type, effective_from=cmd.effective_from)
    return insurance.id


@_handles(c.GrantChronicEntitlement)
def _grant_chronic(app: Registrar, cmd: c.GrantChronicEntitlement, uow: UnitOfWork) -> UUID:
    insurance = _insurance(app, cmd, uow, "grant a chronic-disease entitlement")
    insurance.grant_chronic(clock=app.clock, changed_by=cmd.changed_by, disease_code=cmd.disease_code,
                            effective_from=cmd.effective_from)
    return insurance.id


@_handles(c.RevokeChronicEntitlement)
def _revoke_chronic(app: Registrar, cmd: c.RevokeChronicEntitlement, uow: UnitOfWork) -> UUID:
    insurance = _insurance(app, cmd, uow, "revoke a chronic-disease entitlement")
    insurance.revoke_chronic(clock=app.clock, changed_by=cmd.changed_by, disease_code=cmd.disease_code,
                             reason=cmd.reason, effective_from=cmd.effective_from)
    return insurance.id


@_handles(c.RecordOffSiteFiling)
def _record_filing(app: Registrar, cmd: c.RecordOffSiteFiling, uow: UnitOfWork) -> UUID:
    """长期异地就医备案 is filed with the insured region's agency (参保地)."""
    insurance = _insurance(app, cmd, uow, "record an off-site filing")
    insurance.record_filing(clock=app.clock, changed_by=cmd.changed_by, filing_no=cmd.filing_no, region=cmd.region,
                            valid_from=cmd.valid_from, valid_until=cmd.valid_until)
    return insurance.id


@_handles(c.EndOffSiteFiling)
def _end_filing(app: Registrar, cmd: c.EndOffSiteFiling, uow: UnitOfWork) -> UUID:
    insurance = _insurance(app, cmd, uow, "end an off-site filing")
    insurance.end_filing(clock=app.clock, changed_by=cmd.changed_by, filing_no=cmd.filing_no, reason=cmd.reason,
                         effective_from=cmd.effective_from)
    return insurance.id


# --- emergencies, chronic-disease lists ---------------------------------------------------------------------------


@_handles(c.DeclareEmergency)
def _declare_emergency(app: Registrar, cmd: c.DeclareEmergency, uow: UnitOfWork) -> UUID:
    authorise(cmd.changed_by, cmd.region, "declare a public-health emergency", regulator=True)
    existing = uow.get(EmergencyDeclarations, EmergencyDeclarations.id_for(cmd.region))
    declarations = EmergencyDeclarations.declare(
        existing, clock=app.clock, changed_by=cmd.changed_by, region=cmd.region, declaration_no=cmd.declaration_no,
        title=cmd.title, valid_from=cmd.valid_from, valid_until=cmd.valid_until)
    uow.add(declarations)
    return declarations.id


@_handles(c.EndEmergency)
def _end_emergency(app: Registrar, cmd: c.EndEmergency, uow: UnitOfWork) -> UUID:
    authorise(cmd.changed_by, cmd.region, "end a public-health emergency", regulator=True)
    declarations = uow.require(EmergencyDeclarations, EmergencyDeclarations.id_for(cmd.region), key=cmd.region)
    declarations.end(clock=app.clock, changed_by=cmd.changed_by, declaration_no=cmd.declaration_no,
                     reason=cmd.reason, effective_from=cmd.effective_from)
    return declarations.id


@_handles(c.AddChronicDisease)
def _add_chronic_disease(app: Registrar, cmd: c.AddChronicDisease, uow: UnitOfWork) -> UUID:
    authorise(cmd.changed_by, cmd.region, "change the chronic-disease list", regulator=True)
    existing = uow.get(ChronicDiseaseList, ChronicDiseaseList.id_for(cmd.region))
    listing = ChronicDiseaseList.add(existing, clock=app.clock, changed_by=cmd.changed_by, region=cmd.region,
                                     disease_code=cmd.disease_code, name=cmd.name, effective_from=cmd.effective_from)
    uow.add(listing)
    return listing.id


@_handles(c.RemoveChronicDisease)
def _remove_chronic_disease(app: Registrar, cmd: c.RemoveChronicDisease, uow: UnitOfWork) -> UUID:
    authorise(cmd.changed_by, cmd.region, "change the chronic-disease list", regulator=True)
    listing = uow.require(ChronicDiseaseList, ChronicDiseaseList.id_for(cmd.region), key=cmd.region)
    listing.remove(clock=app.clock, changed_by=cmd.changed_by, disease_code=cmd.disease_code, reason=cmd.reason,
                   effective_from=cmd.effective_from)
    return listing.id


# --- drug catalog -----------------------------------------------------------------------------------------------


def _drug(uow: UnitOfWork, drug_code: str) -> DrugListing:
    return uow.require(DrugListing, DrugListing.id_for(drug_code), key=drug_code)


@_handles(c.ListDrug)
def _list_drug(app: Registrar, cmd: c.ListDrug, uow: UnitOfWork) -> UUID:
    national(cmd.changed_by, "list a drug in the catalog")
    aggregate_id = DrugListing.id_for(cmd.drug_code)
    uow.expect_new(DrugListing, aggregate_id, "drug", cmd.drug_code)
    uow.add(DrugListing.list_drug(
        clock=app.clock, changed_by=cmd.changed_by, drug_code=cmd.drug_code, name=cmd.name, category=cmd.category,
        generic_code=cmd.generic_code, spec=cmd.spec, form=cmd.form, chronic_list=cmd.chronic_list,
        effective_from=cmd.effective_from))
    return aggregate_id


@_handles(c.ChangeDrugListing)
def _change_drug(app: Registrar, cmd: c.ChangeDrugListing, uow: UnitOfWork) -> UUID:
    national(cmd.changed_by, "change a drug's catalog entry")
    drug = _drug(uow, cmd.drug_code)
    drug.change(clock=app.clock, changed_by=cmd.changed_by, category=cmd.category, chronic_list=cmd.chronic_list,
                name=cmd.name, generic_code=cmd.generic_code, effective_from=cmd.effective_from)
    return drug.id


@_handles(c.SetPaymentStandard)
def _payment_standard(app: Registrar, cmd: c.SetPaymentStandard, uow: UnitOfWork) -> UUID:
    authorise(cmd.changed_by, cmd.region, "set a payment standard", regulator=True)
    drug = _drug(uow, cmd.drug_code)
    drug.set_payment_standard(clock=app.clock, changed_by=cmd.changed_by, region=cmd.region, amount=cmd.amount,
                              effective_from=cmd.effective_from)
    return drug.id


@_handles(c.SetPriceCap)
def _price_cap(app: Registrar, cmd: c.SetPriceCap, uow: UnitOfWork) -> UUID:
    authorise(cmd.changed_by, cmd.region, "set a price cap", regulator=True)
    drug = _drug(uow, cmd.drug_code)
    if cmd.institution_id is not None:
        institution = uow.get(Institution, Institution.id_for(cmd.institution_id))
        if institution is not None and institution.region != cmd.region:
            raise InvalidCommand("an institution's cap is set in the institution's region",
                                 institution_id=cmd.institution_id, region=institution.region)
    drug.set_price_cap(clock=app.clock, changed_by=cmd.changed_by, region=cmd.region, cap=cmd.cap,
                       institution_id=cmd.institution_id, effective_from=cmd.effective_from)
    return drug.id


# --- a starter cast (benchmarks, tools) ----------------------------------------------------------------------------


def starter_signing_key(physician_id: str) -> Ed25519PrivateKey:
    """A deterministic Ed25519 key of a starter physician (benchmarks and tools, never production)."""
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(f"rxtrail-starter-key:{physician_id}".encode()).digest())


def starter_commands(*, changed_by: str, region: str, hospital: str, physicians: Sequence[str],
                     pharmacist: str | None = None, pharmacies: Sequence[str] = (),
                     drug_codes: Sequence[str] | None = None, key_prefix: str | None = None) -> list[c.Command]:
    """The registry commands of a small cast: the internet hospital ``hospital`` on its physical institution
    ``P-<hospital>``, its physicians (keys: ``starter_signing_key``), its own pharmacist, designated pharmacies of
    ``region`` carrying ``drug_codes``. ``key_prefix``: idempotency keys ``<prefix>:<id>`` so a rerun is a no-op."""

    def key(ident: str) -> dict[str, Any]:
        return {"changed_by": changed_by} | ({"command_id": f"{key_prefix}:{ident}"} if key_prefix else {})

    physical = f"P-{hospital}"
    place = {"ownership": "public", "level": "tertiary", "region": region}
    commands: list[c.Command] = [
        c.RegisterInstitution.model_validate({**key(physical), **place, "institution_id": physical,
                                              "name": f"Hospital {hospital}", "institution_kind": "physical",
                                              "agreement_no": f"AG-{physical}"}),
        c.RegisterInstitution.model_validate({**key(hospital), **place, "institution_id": hospital,
                                              "name": f"Internet hospital {hospital}", "institution_kind": "internet",
                                              "physical_institution_id": physical, "agreement_no": f"AG-{hospital}"}),
    ]
    for physician in physicians:
        public = starter_signing_key(physician).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()
        commands.append(c.RegisterPhysician(**key(physician), physician_id=physician, hospital_id=hospital,
                                            name=f"Dr {physician}", qualification_no=f"Q-{physician}",
                                            physician_code=f"D-{physician}", public_key=public))
    if pharmacist is not None:
        commands.append(c.RegisterPharmacist(**key(pharmacist), pharmacist_id=pharmacist, employer_id=hospital,
                                             name=f"Pharmacist {pharmacist}", qualification_no=f"Q-{pharmacist}"))
    commands += [c.DesignatePharmacy(**key(p), pharmacy_id=p, name=f"Pharmacy {p}", pooling_region=region,
                                     agreement_no=f"AG-{p}", drug_codes=None if drug_codes is None else tuple(drug_codes))
                 for p in pharmacies]
    return commands


missing = set(c.REGISTRY_COMMANDS) - set(REGISTRY_HANDLERS)
if missing:  # pragma: no cover - caught by the unit tests at import
    raise RuntimeError(f"registry commands without a handler: {sorted(t.__name__ for t in missing)}")
del missing
