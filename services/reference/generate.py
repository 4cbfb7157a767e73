"""Generate the illustrative drug catalog and price caps deterministically.

    python -m services.reference.generate [version]

Codes follow the shape of the national insurance drug code (``XA10BAE001A001010101``: X = western
medicine, then the ATC group, a substance serial, a form/spec serial and manufacturer digits). The
drugs, categories and prices are ILLUSTRATIVE, not the national catalog.
"""

from __future__ import annotations

import json
import random
import sys
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

DATA = Path(__file__).with_name("data")
SEED = 20260101

# (generic name, ATC level-4 group, base price per pack in yuan, usual category)
SUBSTANCES: list[tuple[str, str, str, str]] = [
    ("metformin", "A10BA", "12.50", "A"),
    ("gliclazide", "A10BB", "18.00", "A"),
    ("glimepiride", "A10BB", "22.00", "B"),
    ("acarbose", "A10BF", "35.00", "B"),
    ("sitagliptin", "A10BH", "88.00", "B"),
    ("dapagliflozin", "A10BK", "120.00", "B"),
    ("insulin glargine", "A10AE", "160.00", "B"),
    ("insulin aspart", "A10AB", "70.00", "B"),
    ("amlodipine", "C08CA", "9.80", "A"),
    ("nifedipine", "C08CA", "15.00", "A"),
    ("felodipine", "C08CA", "21.00", "B"),
    ("losartan", "C09CA", "24.00", "A"),
    ("valsartan", "C09CA", "28.00", "B"),
    ("irbesartan", "C09CA", "26.00", "B"),
    ("telmisartan", "C09CA", "30.00", "B"),
    ("enalapril", "C09AA", "8.00", "A"),
    ("benazepril", "C09AA", "19.00", "B"),
    ("metoprolol", "C07AB", "11.00", "A"),
    ("bisoprolol", "C07AB", "16.00", "B"),
    ("hydrochlorothiazide", "C03AA", "4.50", "A"),
    ("indapamide", "C03BA", "13.00", "B"),
    ("spironolactone", "C03DA", "6.00", "A"),
    ("atorvastatin", "C10AA", "32.00", "A"),
    ("rosuvastatin", "C10AA", "38.00", "B"),
    ("simvastatin", "C10AA", "14.00", "A"),
    ("ezetimibe", "C10AX", "55.00", "B"),
    ("aspirin", "B01AC", "15.00", "A"),
    ("clopidogrel", "B01AC", "45.00", "B"),
    ("warfarin", "B01AA", "10.00", "A"),
    ("rivaroxaban", "B01AF", "95.00", "B"),
    ("isosorbide mononitrate", "C01DA", "17.00", "A"),
    ("trimetazidine", "C01EB", "29.00", "B"),
    ("levothyroxine", "H03AA", "25.00", "A"),
    ("methimazole", "H03BB", "12.00", "A"),
    ("omeprazole", "A02BC", "18.00", "A"),
    ("pantoprazole", "A02BC", "26.00", "B"),
    ("salbutamol", "R03AC", "22.00", "A"),
    ("budesonide/formoterol", "R03AK", "230.00", "B"),
    ("tiotropium", "R03BB", "190.00", "B"),
    ("montelukast", "R03DC", "48.00", "B"),
    ("entecavir", "J05AF", "36.00", "A"),
    ("tenofovir", "J05AF", "40.00", "B"),
    ("risperidone", "N05AX", "33.00", "A"),
    ("olanzapine", "N05AH", "60.00", "B"),
    ("sertraline", "N06AB", "52.00", "B"),
    ("escitalopram", "N06AB", "58.00", "B"),
    ("levetiracetam", "N03AX", "75.00", "B"),
    ("valproate", "N03AG", "27.00", "A"),
    ("calcium carbonate/vitamin D3", "A12AX", "19.00", "C"),
    ("alfacalcidol", "A11CC", "42.00", "B"),
    ("allopurinol", "M04AA", "9.00", "A"),
    ("febuxostat", "M04AA", "66.00", "B"),
    ("tamsulosin", "G04CA", "39.00", "B"),
    ("finasteride", "G04CB", "44.00", "B"),
    ("mecobalamin", "B03BA", "23.00", "C"),
    ("compound danshen dripping pills", "C01EB", "31.00", "C"),
    ("ginkgo leaf extract", "N06DX", "46.00", "C"),
    ("multivitamin", "A11JA", "58.00", "NONE"),
    ("fish oil omega-3", "C10AX", "88.00", "NONE"),
    ("glucosamine", "M01AX", "76.00", "NONE"),
]
FORMS = [
    ("tablet", "*30"),
    ("tablet", "*60"),
    ("capsule", "*28"),
    ("sustained-release tablet", "*14"),
    ("tablet", "*7"),
]
STRENGTHS = ["5mg", "10mg", "20mg", "0.25g", "0.5g"]
INSTITUTIONS = ["P-CC-001", "P-CC-002", "P-CX-001", "P-JN-001", "P-JN-002"]
CENT = Decimal("0.01")


def drug_code(index: int, atc: str, form_index: int, maker: int) -> str:
    code = f"X{atc}{'ABCDE'[form_index]}{index + 1:03d}A{form_index + 1:03d}{maker:02d}0101"
    if len(code) != 20:
        raise ValueError(f"bad generated code {code}")
    return code


def generate(version: str) -> dict[str, object]:
    rng = random.Random(SEED)
    drugs: list[dict[str, str]] = []
    caps: list[dict[str, str]] = []
    for index, (name, atc, base, category) in enumerate(SUBSTANCES):
        for form_index, (form, pack) in enumerate(FORMS):
            strength = STRENGTHS[(index + form_index) % len(STRENGTHS)]
            maker = rng.randint(1, 40)
            code = drug_code(index, atc, form_index, maker)
            factor = Decimal(pack.lstrip("*")) / Decimal(30)
            cap = (Decimal(base) * factor * Decimal(rng.randint(90, 115)) / 100).quantize(CENT, ROUND_HALF_UP)
            if cap <= 0:
                cap = CENT
            drugs.append(
                {
                    "code": code,
                    "name": name,
                    "spec": f"{strength}{pack}",
                    "form": form,
                    "atc": atc,
                    "category": category,
                }
            )
            caps.append({"drug_code": code, "institution_id": "*", "cap": str(cap)})
            for institution in INSTITUTIONS:
                if rng.random() < 0.2:
                    local = (cap * Decimal(rng.randint(85, 100)) / 100).quantize(CENT, ROUND_HALF_UP)
                    caps.append({"drug_code": code, "institution_id": institution, "cap": str(local)})
    return {
        "drugs.json": {"version": version, "illustrative": True, "drugs": drugs},
        "price_caps.json": {"version": version, "illustrative": True, "price_caps": caps},
    }


def write(version: str) -> list[Path]:
    out = DATA / version
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, document in generate(version).items():
        path = out / name
        path.write_text(json.dumps(document, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        written.append(path)
    return written


if __name__ == "__main__":
    for path in write(sys.argv[1] if len(sys.argv) > 1 else "2026.1"):
        print(path)
