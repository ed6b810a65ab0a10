"""The PUMS person and housing columns PERSONA reads, the integer type each is stored in, and the
id of a census person."""
from __future__ import annotations

import pyarrow as pa

# Columns every file must have (the narrow CA/TX files have exactly these, apart from PUMA which we skip).
CORE = ["SERIALNO", "SPORDER", "STATE", "PWGTP", "AGEP", "SEX", "RAC1P", "HISP", "SCHL", "CIT", "DIS"]
# Person attributes a full file has; a file with none of them is narrow, with only some is broken.
WIDE = ["NATIVITY", "LANX", "ENG", "MAR", "FER", "ESR", "COW", "INDP", "OCCP", "PINCP",
        "HICOV", "PRIVCOV", "PUBCOV", "DEAR", "DEYE", "DREM", "MIL"]
# Used when every file has them (the official person file); the shared Parquet extract lacks them.
EXTRA_PERSON = ["ANC1P", "POBP", "LANP"]
EXTRA_HOUSING = ["HHT", "HUPAC", "HHL"]

# Smallest integer type that holds each column's codes: the frame stays ~0.3 GB for 3.4 M people.
TYPES = {
    "SERIALNO": pa.string(), "SPORDER": pa.int8(), "STATE": pa.int8(), "PWGTP": pa.int32(),
    "AGEP": pa.int8(), "SEX": pa.int8(), "RAC1P": pa.int8(), "HISP": pa.int8(), "SCHL": pa.int8(),
    "CIT": pa.int8(), "DIS": pa.int8(), "NATIVITY": pa.int8(), "LANX": pa.int8(), "ENG": pa.int8(),
    "MAR": pa.int8(), "FER": pa.int8(), "ESR": pa.int8(), "COW": pa.int8(), "INDP": pa.int16(),
    "OCCP": pa.int16(), "PINCP": pa.int32(), "HICOV": pa.int8(), "PRIVCOV": pa.int8(),
    "PUBCOV": pa.int8(), "DEAR": pa.int8(), "DEYE": pa.int8(), "DREM": pa.int8(), "MIL": pa.int8(),
    "ANC1P": pa.int16(), "POBP": pa.int16(), "LANP": pa.int16(),
    "HHT": pa.int8(), "HUPAC": pa.int8(), "HHL": pa.int8(),
}
# PUMS never leaves these blank (SCHL is blank under age 3, so it is not here).
NOT_NULL = ["SERIALNO", "SPORDER", "STATE", "PWGTP", "AGEP", "SEX", "RAC1P", "HISP", "CIT", "DIS"]
# Numeric (not coded) columns: checked for range, not against the dictionary's code list.
NUMERIC = {"SPORDER", "PWGTP", "AGEP", "PINCP"}


def person_id(serialno: str, sporder: int) -> str:
    """The id of a census person: household serial number + person number, e.g. '2024HU0000123-02'."""
    return f"{serialno}-{int(sporder):02d}"
