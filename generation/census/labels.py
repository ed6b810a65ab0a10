"""Turn sampled people (PUMS codes) into labelled rows: the persona attributes in words, plus the raw
codes the consistency rules check."""
from __future__ import annotations

import re

import pandas as pd

from .columns import CORE, WIDE
from .dictionary import Dictionary, as_dictionary
from .errors import CensusError

OUTPUT_COLUMNS = [
    "source_serialno", "source_sporder", "state", "age", "sex", "race", "education",
    "employment_status", "class_of_worker", "industry_category", "occupation_category", "income",
    "marital_status", "citizenship", "nativity", "veteran_status", "disability", "health_insurance",
    "cognitive_difficulty", "ability_to_speak_english", "household_language", "vision_difficulty",
    "hearing_difficulty", "fertility", "ancestry", "place_of_birth", "household_type",
    "family_presence_and_age", "imputed_fields", "generated_fields",
]
# Which PUMS columns each labelled attribute comes from (imputed_fields maps imputed columns through it).
ATTRIBUTE_SOURCES = {
    "state": ["STATE"], "age": ["AGEP"], "sex": ["SEX"], "race": ["RAC1P", "HISP"], "education": ["SCHL"],
    "employment_status": ["ESR"], "class_of_worker": ["COW"], "industry_category": ["INDP"],
    "occupation_category": ["OCCP"], "income": ["PINCP"], "marital_status": ["MAR"],
    "citizenship": ["CIT"], "nativity": ["NATIVITY"], "veteran_status": ["MIL"], "disability": ["DIS"],
    "health_insurance": ["HICOV", "PRIVCOV", "PUBCOV"], "cognitive_difficulty": ["DREM"],
    "ability_to_speak_english": ["ENG"], "household_language": ["LANX", "LANP", "HHL"],
    "vision_difficulty": ["DEYE"], "hearing_difficulty": ["DEAR"], "fertility": ["FER"],
    "ancestry": ["ANC1P"], "place_of_birth": ["POBP"], "household_type": ["HHT"],
    "family_presence_and_age": ["HUPAC"],
}
# Raw codes kept beside the labels (as code_<VAR>, nullable Int64, <NA> = PUMS N/A) for rule checks.
CODE_COLUMNS = ["AGEP", "SEX", "STATE", "RAC1P", "HISP", "SCHL", "ESR", "COW", "INDP", "OCCP", "PINCP",
                "MAR", "CIT", "NATIVITY", "MIL", "DIS", "HICOV", "PRIVCOV", "PUBCOV", "DREM", "ENG",
                "LANX", "DEYE", "DEAR", "FER", "ANC1P", "POBP", "LANP", "HHT", "HUPAC", "HHL"]
LABEL_PREFIX = re.compile(r"^[A-Z]{3}-(?=\S)")     # "MGR-Chief Executives..." -> "Chief Executives..."
NOT_WORKED = "Not applicable (has not worked in the past 5 years or never worked)"
GROUP_QUARTERS = "Not applicable (lives in group quarters)"


def label_people(df: pd.DataFrame, dictionary) -> pd.DataFrame:
    """One labelled row per sampled person (columns OUTPUT_COLUMNS, then code_<VAR> for CODE_COLUMNS
    and code_DONOR, the person id of the hot-deck donor or None).

    df: a sample table from generation.sampling (PUMS codes, `imputed_columns`, `donor_id`).
    """
    d = as_dictionary(dictionary)
    if d is None:
        raise CensusError("label_people needs the PUMS data dictionary")
    missing = [c for c in CORE + WIDE if c not in df.columns]
    if missing:
        raise CensusError(f"sample table: missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
    cols = [c for c in CODE_COLUMNS + ["SERIALNO", "SPORDER"] if c in df.columns]
    records = df[cols].astype(object).where(df[cols].notna(), None).to_dict("records")
    imputed = df["imputed_columns"] if "imputed_columns" in df.columns else [[]] * len(df)
    donors = df["donor_id"] if "donor_id" in df.columns else [None] * len(df)
    rows = []
    for r, imp, donor in zip(records, imputed, donors):
        row = _label_row(r, d)
        imp = set(imp)
        row["imputed_fields"] = [a for a, src in ATTRIBUTE_SOURCES.items() if imp.intersection(src)]
        for c in CODE_COLUMNS:
            row["code_" + c] = r.get(c)
        row["code_DONOR"] = donor if isinstance(donor, str) else None
        rows.append(row)
    out = pd.DataFrame(rows, columns=OUTPUT_COLUMNS + ["code_" + c for c in CODE_COLUMNS] + ["code_DONOR"])
    for c in ["ancestry", "place_of_birth", "household_type", "family_presence_and_age", "code_DONOR"]:
        out[c] = pd.Series([row[c] for row in rows], dtype=object)   # None stays None, not NaN
    out["source_sporder"] = out["source_sporder"].astype("int64")
    out["age"] = out["age"].astype("int64")
    for c in CODE_COLUMNS:
        out["code_" + c] = out["code_" + c].astype("Int64")
    return out


def _strip_state(label: str) -> str:
    return re.sub(r"/[A-Z]{2}$", "", label)


def _label_row(r: dict, d: Dictionary) -> dict:
    age = r["AGEP"]
    lab = d.label
    out = {"source_serialno": str(r["SERIALNO"]), "source_sporder": int(r["SPORDER"]), "age": int(age)}
    out["state"] = _strip_state(lab("STATE", r["STATE"]))
    out["sex"] = lab("SEX", r["SEX"])
    hispanic = r["HISP"] != 1
    origin = lab("HISP", r["HISP"])
    out["race"] = (f"Hispanic or Latino ({origin}), " if hispanic else "Not Hispanic or Latino, ") + lab("RAC1P", r["RAC1P"])
    out["education"] = "Not applicable (under 3)" if r["SCHL"] is None else lab("SCHL", r["SCHL"])

    out["employment_status"] = "Not applicable (under 16)" if r["ESR"] is None else lab("ESR", r["ESR"])
    for attr, var in [("class_of_worker", "COW"), ("industry_category", "INDP"), ("occupation_category", "OCCP")]:
        if r[var] is None:
            out[attr] = "Not applicable (under 16)" if age < 16 else NOT_WORKED
        else:
            out[attr] = LABEL_PREFIX.sub("", lab(var, r[var]))
    out["income"] = _income(r["PINCP"])
    if r["MAR"] == 5:   # PUMS code 5 is "Never married or under 15 years old": say which
        out["marital_status"] = "Never married" if age >= 15 else "Not applicable (under 15)"
    else:
        out["marital_status"] = lab("MAR", r["MAR"])
    out["citizenship"] = lab("CIT", r["CIT"])
    out["nativity"] = lab("NATIVITY", r["NATIVITY"])
    out["veteran_status"] = "Not applicable (under 17)" if r["MIL"] is None else lab("MIL", r["MIL"])
    out["disability"] = lab("DIS", r["DIS"])
    out["health_insurance"] = _insurance(r)
    out["cognitive_difficulty"] = "Not applicable (under 5)" if r["DREM"] is None else lab("DREM", r["DREM"])
    out["vision_difficulty"] = lab("DEYE", r["DEYE"])
    out["hearing_difficulty"] = lab("DEAR", r["DEAR"])

    if r["ENG"] is not None:
        out["ability_to_speak_english"] = lab("ENG", r["ENG"])
    elif r["LANX"] == 2:
        out["ability_to_speak_english"] = "Speaks only English at home"
    else:
        out["ability_to_speak_english"] = "Not applicable (under 5)"
    generated = []
    if r["LANX"] == 2:
        out["household_language"] = "English only"
    elif r["LANX"] == 1:
        if r.get("LANP") is not None:
            out["household_language"] = lab("LANP", r["LANP"])
        else:   # the extract only says "not English": the LLM picks the language
            out["household_language"] = "A language other than English"
            generated.append("household_language")
    elif r.get("HHL") is not None:   # under 5: no own answer, the household's language says most
        out["household_language"] = lab("HHL", r["HHL"])
    else:
        out["household_language"] = "Not applicable (under 5)"

    if r["FER"] == 1:
        out["fertility"] = "Gave birth within the past 12 months"
    elif r["FER"] == 2:
        out["fertility"] = "Did not give birth within the past 12 months"
    elif r["FER"] is not None:
        out["fertility"] = lab("FER", r["FER"])
    elif r["SEX"] == 1:
        out["fertility"] = "Not applicable (male)"
    else:
        out["fertility"] = "Not applicable (under 15 or over 50)"

    for attr, var, na in [("ancestry", "ANC1P", "Not reported"), ("place_of_birth", "POBP", "Not reported"),
                          ("household_type", "HHT", GROUP_QUARTERS),
                          ("family_presence_and_age", "HUPAC", GROUP_QUARTERS)]:
        if var not in r:          # the source lacks the column: the LLM must fill it
            out[attr] = None
            generated.append(attr)
        elif r[var] is None:
            out[attr] = na
        else:
            out[attr] = _strip_state(lab(var, r[var])) if var == "POBP" else lab(var, r[var])
    out["generated_fields"] = [a for a in OUTPUT_COLUMNS if a in generated]
    return out


def _income(v) -> str:
    if v is None:
        return "Not applicable (under 15)"
    if v == 0:
        return "No income"
    if v < 0:
        return f"Net loss of ${-v:,} per year"
    return f"${v:,} per year"


def _insurance(r: dict) -> str:
    if r["HICOV"] == 2:
        return "No health insurance"
    private, public = r["PRIVCOV"] == 1, r["PUBCOV"] == 1
    if private and public:
        return "Private and public insurance"
    if private:
        return "Private insurance only"
    if public:
        return "Public insurance only"
    return "Insured (type not recorded)"
