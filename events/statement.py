"""Statement stream: monthly statements per party and the year-end release of the 5% deposit."""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field, model_validator

from events.base import BusinessType, DomainEvent, Id, Money, Region


class PartyKind(StrEnum):
    HOSPITAL = "hospital"
    PHYSICAL_INSTITUTION = "physical_institution"
    PHARMACY = "pharmacy"
    DELIVERY_ENTERPRISE = "delivery_enterprise"


class StatementIssued(DomainEvent):
    """月度结算单：payable = gross − refused − clawed_back − withheld_deposit。"""

    business_type: BusinessType
    party_id: Id
    party_kind: PartyKind
    pooling_region: Region
    month: str = Field(pattern=r"^\d{4}-(0[1-9]|1[0-2])$")
    gross: Money
    refused: Money
    clawed_back: Money
    withheld_deposit: Money
    payable: Money
    policy_version: Id

    @model_validator(mode="after")
    def _payable_adds_up(self) -> StatementIssued:
        expected = self.gross - self.refused - self.clawed_back - self.withheld_deposit
        if self.payable != expected:
            raise ValueError(
                f"payable {self.payable} != gross - refused - clawed_back - deposit ({expected})"
            )
        return self


class DepositReleased(DomainEvent):
    """年终考核后返还履约保证金。"""

    business_type: BusinessType
    party_id: Id
    year: int = Field(ge=2000, le=2999)
    amount: Money
    assessment_ref: Id


STATEMENT_EVENTS: tuple[type[DomainEvent], ...] = (StatementIssued, DepositReleased)
