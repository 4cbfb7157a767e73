"""Statements as a finance clerk reads them: CSV (one row per line, party and period on every row) and PDF.

Lines of a statement (amounts in yuan, two places; DOMAIN.md, Settlement: the agency pays fund + personal account):

1. fund share settled in the month (gross), with informational detail lines (counts, self-pay the provider collects
   from patients, delivery fees that insurance never pays, each member hospital of an institution);
2. personal-account share settled in the month (gross);
3. less fees refused in audit during the month;
4. less fees clawed back during the month;
5. less settlements reversed during the month;
6. carried from closed months: what reached the record after their statement was closed (net; 6.n per month);
7. less the performance deposit withheld (where the region's policy withholds one: physical institutions);
8. payable (negative: owed by the party to the agency).

PDF: fpdf2 with a CJK-capable TrueType font for the Chinese labels. The font is looked for at
``RXTRAIL_PDF_FONT``, then WenQuanYi Micro Hei (Debian ``fonts-wqy-microhei``) and Noto Sans CJK
(``fonts-noto-cjk``); without one the PDF is rendered in Helvetica with English labels only.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from services.application.statements import ClosedStatement
from services.domain.statement import DEPOSIT_PARTY_KINDS

FONT_CANDIDATES = (
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
)
CSV_COLUMNS = ("statement_id", "party_kind", "party_id", "pooling_region", "period", "line", "item", "item_zh",
               "amount", "count")


@dataclass(frozen=True)
class Line:
    number: str
    item: str
    item_zh: str
    amount: Decimal | None
    count: int | None = None

    @property
    def total_line(self) -> bool:
        return "." not in self.number


def lines(closed: ClosedStatement) -> list[Line]:
    s, d = closed.statement, closed.detail
    rate_pct = f"{closed.deposit_rate * 100:.0f}%"
    out = [Line("1", "Fund share settled in the month (gross)", "统筹基金支付", s.gross)]
    if d is not None:
        if d.consultations:
            out.append(Line("1.1", "Consultation fees (follow-up visits)", "诊察费", d.consultation_fees,
                            d.consultations))
        out.append(Line("1.2", "Drug fees settled (prescriptions)", "药品费", d.drug_fees, d.prescriptions))
        out.append(Line("1.3", "Paid by patients themselves (self-pay, collected by the provider)", "个人自付",
                        d.self_pay))
        out.append(Line("1.4", "Delivery fees (never insurance-paid, R6)", "配送费（医保不予支付）", d.delivery_fees))
        for i, member in enumerate(d.members, start=1):
            out.append(Line(f"1.5.{i}", f"Fund + personal account of internet hospital {member.party_id}",
                            "互联网医院统筹基金及个人账户", member.fund + member.personal_account,
                            member.consultations + member.prescriptions))
    out.append(Line("2", "Personal-account share settled in the month (gross)", "个人账户支付", s.personal_account))
    out.append(Line("3", "Less: fees refused in audit", "减：审核拒付", -s.refused))
    out.append(Line("4", "Less: fees clawed back", "减：追回违规费用", -s.clawed_back))
    out.append(Line("5", "Less: settlements reversed", "减：结算冲正", -s.reversed))
    out.append(Line("6", "Carried from closed months (net)", "以前月份结转（净额）",
                    sum((c.net for c in s.carried), Decimal("0.00"))))
    for i, c in enumerate(s.carried, start=1):
        out.append(Line(f"6.{i}", f"Carried from {c.month}: fund {c.fund:.2f}, account {c.personal_account:.2f},"
                                  f" refused {c.refused:.2f}, clawed back {c.clawed_back:.2f},"
                                  f" reversed {c.reversed:.2f}", f"结转 {c.month}", c.net))
    if s.party_kind in DEPOSIT_PARTY_KINDS:
        out.append(Line("7", f"Less: performance deposit withheld ({rate_pct})", "减：预留履约保证金",
                        -s.withheld_deposit))
    label = "Payable (negative: owed by the party)" if s.owed_by_party else "Payable"
    out.append(Line("8", label, "应拨付金额", s.payable))
    return out


def to_csv(statements: Sequence[ClosedStatement]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for closed in statements:
        s = closed.statement
        for line in lines(closed):
            writer.writerow((s.id, s.party_kind.value, s.party_id, s.pooling_region, s.month, line.number, line.item,
                             line.item_zh, "" if line.amount is None else f"{line.amount:.2f}",
                             "" if line.count is None else line.count))
    return buffer.getvalue()


def find_font() -> Path | None:
    configured = os.environ.get("RXTRAIL_PDF_FONT")
    for candidate in ([configured] if configured else []) + list(FONT_CANDIDATES):
        if Path(candidate).is_file():
            return Path(candidate)
    return None


def rate(closed: ClosedStatement) -> str:
    return f"{closed.deposit_rate * 100:.0f}%"


def _amount(value: Decimal | None) -> str:
    return "" if value is None else f"{value:,.2f}"


def to_pdf(statements: Sequence[ClosedStatement], font: Path | None = None) -> bytes:
    """One page per statement: header (party, kind, region, period, statement id), the lines, the payable."""
    from fpdf import FPDF

    font = font or find_font()
    pdf = FPDF(format="A4")
    pdf.set_auto_page_break(auto=True, margin=15)
    pdf.set_title("rxtrail monthly settlement statements")
    pdf.set_creator("rxtrail")
    if font is not None:
        pdf.add_font("statement", fname=str(font))
        family = "statement"
    else:
        family = "Helvetica"

    def text(english: str, chinese: str = "") -> str:
        return f"{english}  {chinese}" if chinese and font is not None else english

    for closed in statements:
        s = closed.statement
        pdf.add_page()
        pdf.set_font(family, size=15)
        pdf.cell(0, 10, text("Monthly settlement statement", "医保月度结算单"), new_x="LMARGIN", new_y="NEXT")
        pdf.set_font(family, size=10)
        for label, label_zh, value in (
            ("Party", "结算对象", s.party_id),
            ("Party kind", "类别", s.party_kind.value.replace("_", " ")),
            ("Pooling region", "统筹区", s.pooling_region),
            ("Period", "结算月份", s.month),
            ("Statement id", "结算单号", str(s.id)),
            ("Issued (UTC)", "出具时间", f"{s.issued_at:%Y-%m-%d %H:%M}"),
            ("Region policy", "政策版本", s.policy_version),
        ):
            pdf.cell(45, 6, text(label, label_zh) + ":")
            pdf.cell(0, 6, value, new_x="LMARGIN", new_y="NEXT")
        pdf.ln(4)
        pdf.set_font(family, size=10)
        pdf.cell(14, 7, "Line", border="B")
        pdf.cell(126, 7, text("Item", "项目"), border="B")
        pdf.cell(14, 7, "Count", border="B", align="R")
        pdf.cell(0, 7, text("Amount", "金额（元）"), border="B", align="R", new_x="LMARGIN", new_y="NEXT")
        for line in lines(closed):
            pdf.set_font(family, size=10 if line.total_line else 8.5)
            border = "T" if line.number == "8" else ""
            pdf.cell(14, 6, line.number, border=border)
            pdf.cell(126, 6, text(line.item, line.item_zh), border=border)
            pdf.cell(14, 6, "" if line.count is None else str(line.count), border=border, align="R")
            pdf.cell(0, 6, _amount(line.amount), border=border, align="R", new_x="LMARGIN", new_y="NEXT")
        pdf.ln(6)
        pdf.set_font(family, size=8)
        notes = [
            "Payable = fund + personal account - refused - clawed back - reversed + carried - deposit."
            " Lines 1.x and 6.x are detail and are not added again.",
            "Refusals, clawbacks (003 art. 30) and reversals are deducted in the month they are recorded in; what"
            " reaches the record for a month already closed is carried by the next statement (line 6).",
        ]
        if s.party_kind in DEPOSIT_PARTY_KINDS:
            notes.append(f"The deposit ({rate(closed)} of audited fees, the region's policy; 003 art. 20) is released"
                         " after the year by the performance assessment.")
        else:
            notes.append("Circulation drug fees are paid in full; no deposit is withheld (003 art. 20).")
        for note in notes:
            pdf.multi_cell(0, 4.5, note, new_x="LMARGIN", new_y="NEXT")
    return bytes(pdf.output())
