"""Configurable windows and limits of the rules (DOMAIN.md defaults)."""

from __future__ import annotations

import calendar
from datetime import date, datetime, timedelta, timezone

from pydantic import BaseModel, ConfigDict, Field, model_validator


class RuleConfig(BaseModel):
    """规则参数：复诊窗口（R1）、普通与长处方天数（R4）、处方有效期（R19）。Each field belongs to a rule of the catalogue
    (``services.domain.rules``), which shows its current value."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    follow_up_window_months: int = Field(
        default=3, ge=1, description="R1: offline diagnosis at most this old"
    )
    ordinary_rx_max_days: int = Field(
        default=7, ge=1,
        description="R4: days of supply beyond which a prescription is long (处方管理办法 art. 19: 7 days), "
                    "per patient and generic drug",
    )
    long_rx_max_days: int = Field(
        default=56, ge=1, description="R4: long prescription for a listed chronic disease, per patient and generic drug"
    )
    emergency_max_days: int = Field(
        default=90, ge=1, description="R4: while the authority declares a public-health emergency for the region"
    )
    validity_days: int = Field(default=3, ge=1, description="R19: prescription validity after issue")
    local_utc_offset_hours: int = Field(default=8, ge=-12, le=14, description="calendar dates are China time")

    @model_validator(mode="after")
    def _emergency_not_stricter(self) -> RuleConfig:
        if self.emergency_max_days < self.long_rx_max_days:
            raise ValueError("emergency_max_days must be >= long_rx_max_days")
        if self.long_rx_max_days < self.ordinary_rx_max_days:
            raise ValueError("long_rx_max_days must be >= ordinary_rx_max_days")
        return self

    def local_date(self, at: datetime) -> date:
        return at.astimezone(timezone(timedelta(hours=self.local_utc_offset_hours))).date()


def add_months(day: date, months: int) -> date:
    """Calendar month arithmetic, clamping to the month's last day (31 May − 3 months = 28/29 Feb)."""
    index = day.year * 12 + day.month - 1 + months
    year, month = divmod(index, 12)
    month += 1
    last = calendar.monthrange(year, month)[1]
    return date(year, month, min(day.day, last))


DEFAULT_RULES = RuleConfig()
