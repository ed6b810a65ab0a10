"""UK census teaching microdata: Northern Ireland 2021 (NISRA), Scotland 2011 (NRS) and England and Wales
2021 (ONS, read through the NI crosswalk to its ONS 2021 variable names).

Each file is described by a `UkSpec`: its provenance (for the card, manifest and OGL attribution), the
file column of each canonical variable, and the label of every code, in the publisher's own words. Codes
are kept as strings ("1", "-8", "X") so integer (NI, E&W) and string (Scotland) files read alike; a code
outside the spec is a CensusError naming the file, column and row, never a silent label. The records are
equal-weight 1% samples (no person weights).

Watch out: NI 2021 codes SEX 1 = Female, 2 = Male; Scotland 2011 codes sex 1 = Male, 2 = Female. The
labels below are per file, so both read as the words their publisher gave.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from .errors import CensusError

OGL = "Open Government Licence v3.0"
OGL_URL = "http://www.nationalarchives.gov.uk/doc/open-government-licence/version/3/"

# Age band code -> (youngest, oldest) age; the year within a band is a seeded draw (the teaching files
# give only the band). 90 closes the open 75+ band.
AGE_BANDS = {"1": (0, 15), "2": (16, 24), "3": (25, 34), "4": (35, 44), "5": (45, 54), "6": (55, 64),
             "7": (65, 74), "8": (75, 90)}
_AGES = {"1": "0 to 15", "2": "16 to 24", "3": "25 to 34", "4": "35 to 44", "5": "45 to 54", "6": "55 to 64",
         "7": "65 to 74", "8": "75 and over"}
_HEALTH = {"1": "Very good health", "2": "Good health", "3": "Fair health", "4": "Bad health", "5": "Very bad health"}
_MARITAL = {"1": "Single (never married or in a civil partnership)", "2": "Married or in a civil partnership",
            "3": "Separated (still legally married or in a civil partnership)",
            "4": "Divorced or civil partnership dissolved", "5": "Widowed or surviving civil partner"}
_GRADE = {"1": "AB: higher and intermediate managerial, administrative and professional",
          "2": "C1: supervisory, clerical and junior managerial, administrative and professional",
          "3": "C2: skilled manual", "4": "DE: semi-skilled and unskilled manual; unemployed and lowest grade"}
_HOURS = {"1": "15 hours or less", "2": "16 to 30 hours", "3": "31 to 48 hours", "4": "49 or more hours"}
_ECON = {"1": "Employee", "2": "Self-employed", "3": "Unemployed", "4": "Full-time student, economically active",
         "5": "Retired", "6": "Student, economically inactive", "7": "Looking after home or family",
         "8": "Long-term sick or disabled", "9": "Economically inactive (other)"}
_SOC = {"1": "Managers, directors and senior officials", "2": "Professional occupations",
        "3": "Associate professional and technical occupations", "4": "Administrative and secretarial occupations",
        "5": "Skilled trades occupations", "6": "Caring, leisure and other service occupations",
        "7": "Sales and customer service occupations", "8": "Process, plant and machine operatives",
        "9": "Elementary occupations"}
# "does not apply" codes: NI/E&W -8, Scotland X; what each means for the variable
NA_CODES = ("-8", "X")


@dataclass(frozen=True)
class UkSpec:
    key: str                       # recipe's census.format
    title: str
    publisher: str
    year: int
    nation: str                    # the UK nation (or nations) the file covers
    url: str                       # official page (where users download it)
    attribution: str               # the OGL v3 attribution statement
    id_column: str
    columns: dict[str, str]        # canonical variable -> file column
    labels: dict[str, dict[str, str]]   # canonical variable -> code -> label
    optional: tuple[str, ...] = ()      # canonical variables a file may lack
    rows: int | None = None        # the published record count

    def column(self, var: str) -> str:
        return self.columns[var]


_NI_LABELS = {
    "age": _AGES,
    "birth": {"1": "Born in Northern Ireland", "2": "Born in the rest of the UK or in the Republic of Ireland",
              "3": "Born outside the UK and Ireland"},
    "econ": {**_ECON, "-8": "Not applicable (under 16)"},
    "ethnic": {"1": "White", "2": "Other ethnic group (not White)"},
    "health": _HEALTH,
    "family": {"1": "Not in a family", "2": "Married or civil partnership couple family",
               "3": "Cohabiting couple family", "4": "Lone parent family (female parent)",
               "5": "Lone parent family (male parent)", "-8": "Lives in a communal establishment"},
    "grade": {**_GRADE, "-8": "Not applicable"},
    "hours": {**_HOURS, "-8": "Not applicable (under 16 or not in work)"},
    "student": {"1": "Student or schoolchild", "2": "Not a student or schoolchild", "-8": "Under school age"},
    "industry": {"1": "Agriculture, forestry and fishing", "2": "Manufacturing", "3": "Energy and water",
                 "4": "Construction", "5": "Distribution, hotels and restaurants", "6": "Transport and communication",
                 "7": "Financial, real estate, professional and administrative activities",
                 "8": "Public administration, education and health", "9": "Other services",
                 "-8": "Not applicable (under 16 or not in work)"},
    "marital": {**_MARITAL, "-8": "Not applicable (under 16)"},
    "occupation": {**_SOC, "-8": "Not applicable (under 16 or not in work)"},
    "religion": {"1": "Catholic", "2": "Presbyterian Church in Ireland", "3": "Church of Ireland",
                 "4": "Methodist Church in Ireland", "5": "Other Christian", "6": "Other religion",
                 "7": "No religion", "8": "Religion not stated"},
    # code 4 has no label in NISRA's dictionary; by elimination it is "None" (census-uk README)
    "religion_brought_up": {"1": "Catholic", "2": "Protestant or other Christian", "3": "Other religion",
                            "4": "No religion", "-8": "Not applicable"},
    "sex": {"1": "Female", "2": "Male"},   # NI: 1 = Female
    "residence": {"1": "Household", "2": "Communal establishment"},
}
_NI_COLUMNS = {
    "age": "AGE_BAND_AGG8", "birth": "COB_AGG3", "econ": "ECONOMIC_ACTIVITY_10M", "ethnic": "ETHNIC_GROUP_AGG2",
    "health": "HEALTH_IN_GENERAL", "family": "FAMILY_TYPE", "grade": "HH_SOCGRADE4",
    "hours": "HOURS_PER_WEEK_WORKED", "student": "IN_FULL_TIME_EDUCATION", "industry": "INDUSTRY_CURRENT_10A",
    "marital": "LEGAL_PARTNERSHIP_STATUS_6A", "occupation": "OCCUPATION_CURRENT_1DIGIT",
    "religion": "RELIGION_BELONG_TO", "religion_brought_up": "RELIGION_BROUGHT_UP_IN", "sex": "SEX",
    "residence": "UR_RESIDENCE_TYPE",
}

NI_2021 = UkSpec(
    key="ni-2021", title="Census 2021 public microdata teaching sample for Northern Ireland",
    publisher="Northern Ireland Statistics and Research Agency (NISRA)", year=2021, nation="Northern Ireland",
    url="https://www.nisra.gov.uk/publications/census-2021-public-microdata-teaching-sample-northern-ireland",
    attribution=("Source: NISRA, Census 2021 public microdata teaching sample for Northern Ireland. Contains "
                 "public sector information licensed under the Open Government Licence v3.0."),
    id_column="SerialNum", columns=_NI_COLUMNS, labels=_NI_LABELS, rows=16_894)

# The NI 2021 variable crosswalk (../shared/data/census-uk/ni_2021_variable_crosswalk.csv): ONS 2021 names.
# E&W has one religion variable (religion_tb, NI's RELIGION_BELONG_TO) and no "religion brought up in"; its
# record id is `resident_id_m` in the published header (the crosswalk says resident_id).
# Caveat: only the names are crosswalked. Where the E&W code list differs from NI's (religion_tb lists
# Christian, Muslim, ... rather than Catholic, Presbyterian, ...), a code outside NI's list stops the read
# with the file, column and row; a code that exists in both with another meaning cannot be caught here.
ONS_2021_NAMES = {
    "SerialNum": "resident_id_m", "AGE_BAND_AGG8": "resident_age_7d", "COB_AGG3": "country_of_birth_3a",
    "ECONOMIC_ACTIVITY_10M": "economic_activity_status_10m", "ETHNIC_GROUP_AGG2": "ethnic_group_tb_6a",
    "HEALTH_IN_GENERAL": "health_in_general", "FAMILY_TYPE": "hh_families_type_6a",
    "HOURS_PER_WEEK_WORKED": "hours_per_week_worked", "IN_FULL_TIME_EDUCATION": "in_full_time_education",
    "INDUSTRY_CURRENT_10A": "industry_10a", "LEGAL_PARTNERSHIP_STATUS_6A": "legal_partnership_status_6a",
    "OCCUPATION_CURRENT_1DIGIT": "occupation_10a", "RELIGION_BELONG_TO": "religion_tb", "SEX": "sex",
    "HH_SOCGRADE4": "approx_social_grade", "UR_RESIDENCE_TYPE": "residence_type",
}
EW_2021 = UkSpec(
    key="ew-2021", title="Public microdata teaching sample, England and Wales: Census 2021",
    publisher="Office for National Statistics (ONS)", year=2021, nation="England and Wales",
    url=("https://www.ons.gov.uk/peoplepopulationandcommunity/populationandmigration/populationestimates/"
         "datasets/publicmicrodatateachingsampleenglandandwalescensus2021"),
    attribution=("Source: Office for National Statistics, Public microdata teaching sample, England and Wales: "
                 "Census 2021. Contains public sector information licensed under the Open Government Licence v3.0."),
    id_column="resident_id_m", columns={v: ONS_2021_NAMES[c] for v, c in _NI_COLUMNS.items() if c in ONS_2021_NAMES},
    labels={v: lab for v, lab in _NI_LABELS.items() if v != "religion_brought_up"}, rows=604_351)

SCOTLAND_2011 = UkSpec(
    key="scotland-2011", title="Scotland's Census 2011 Microdata Teaching File",
    publisher="National Records of Scotland (NRS)", year=2011, nation="Scotland",
    url="https://www.scotlandscensus.gov.uk/documents/microdata-teaching-file-and-user-guide/",
    attribution=("Source: National Records of Scotland, Scotland's Census 2011 Microdata Teaching File. Contains "
                 "public sector information licensed under the Open Government Licence v3.0."),
    id_column="Record_Number",
    columns={"age": "age", "birth": "Country_Of_Birth", "econ": "Economic_Activity", "ethnic": "Ethnic_Group",
             "health": "health", "family": "Family_Composition", "grade": "Approximate_Social_Grade",
             "hours": "Hours_Worked_Per_Week", "student": "student", "industry": "industry",
             "marital": "Marital_Status", "occupation": "Occupation", "religion": "religion", "sex": "sex",
             "residence": "RESIDENCE_TYPE"},
    labels={
        "age": _AGES,
        "birth": {"1": "Born in the UK", "2": "Born outside the UK"},
        "econ": {**_ECON, "1": "Employed", "X": "Not applicable (under 16)"},
        "ethnic": {"1": "White", "2": "Mixed or multiple ethnic groups", "3": "Asian", "4": "African",
                   "5": "Caribbean or Black", "6": "Other ethnic group"},
        "health": _HEALTH,
        "family": {"0": "Not in a family", "1": "Married or same-sex civil partnership couple family",
                   "2": "Cohabiting couple family", "3": "Lone parent family (male parent)",
                   "4": "Lone parent family (female parent)", "5": "Other related family",
                   "X": "Lives in a communal establishment"},
        "grade": {**_GRADE, "X": "Not applicable"},
        "hours": {**_HOURS, "X": "Not applicable (under 16 or not in work)"},
        "student": {"1": "Schoolchild or full-time student", "2": "Not a student"},
        "industry": {"1": "Agriculture, forestry and fishing",
                     "2": "Mining, manufacturing, energy and water supply", "3": "Construction",
                     "4": "Wholesale and retail trade; repair of motor vehicles", "5": "Accommodation and food services",
                     "6": "Transport, storage, information and communication", "7": "Financial and insurance activities",
                     "8": "Real estate, professional, scientific, technical and administrative services",
                     "9": "Public administration and defence", "10": "Education",
                     "11": "Human health and social work", "12": "Arts, entertainment and recreation",
                     "13": "Other", "X": "Not applicable (under 16 or never worked)"},
        "marital": _MARITAL,
        "occupation": {**_SOC, "X": "Not applicable (under 16 or never worked)"},
        "religion": {"1": "No religion", "2": "Christian", "3": "Buddhist", "4": "Hindu", "5": "Jewish",
                     "6": "Muslim", "7": "Sikh", "8": "Other religion", "9": "Religion not stated"},
        "sex": {"1": "Male", "2": "Female"},   # Scotland: 1 = Male (the opposite of NI)
        "residence": {"P": "Household", "C": "Communal establishment"},
    },
    rows=63_388)

SPECS = {s.key: s for s in (NI_2021, SCOTLAND_2011, EW_2021)}


def read_uk(path, spec: UkSpec) -> pd.DataFrame:
    """The file's records as strings: `id` (the record serial) and one column per canonical variable of
    the spec. Parquet or CSV (the official files are CSV); every code checked against the spec."""
    path = Path(path)
    if not path.is_file():
        raise CensusError(f"{path}: no such file")
    try:
        if path.suffix == ".parquet":
            table = pq.read_table(path)
        elif path.suffix == ".csv":
            table = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(
                column_types={c: pa.string() for c in [spec.id_column, *spec.columns.values()]}))
        else:
            raise CensusError(f"{path}: expected a .parquet or .csv teaching file for {spec.title}")
    except (pa.ArrowException, OSError) as e:
        raise CensusError(f"{path}: not a readable {path.suffix[1:]} file ({e})") from None
    names = set(table.column_names)
    missing = [c for v, c in [("id", spec.id_column), *spec.columns.items()]
               if c not in names and v not in spec.optional]
    if missing:
        raise CensusError(f"{path}: missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
                          f"(a {spec.title} file has them)")
    if table.num_rows == 0:
        raise CensusError(f"{path}: empty file (0 rows)")
    out = {"id": [str(v).strip() for v in table[spec.id_column].to_pylist()]}
    for var, col in spec.columns.items():
        if col not in names:
            continue
        values = [None if v is None else str(v).strip() for v in table[col].to_pylist()]
        known = spec.labels[var]
        bad = next((i for i, v in enumerate(values) if v not in known), None)
        if bad is not None:
            raise CensusError(f"{path}: column {col} row {bad}: code {values[bad]!r} is not in the {spec.title} "
                              f"code list ({', '.join(known)})")
        out[var] = values
    if len(set(out["id"])) != len(out["id"]):
        raise CensusError(f"{path}: column {spec.id_column}: record serials repeat")
    return pd.DataFrame(out, dtype=object)
