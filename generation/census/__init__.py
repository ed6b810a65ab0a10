"""Census side of PERSONA: read ACS PUMS person records, validate them, read the PUMS data dictionary,
fetch the official files with a checksum cache, and turn sampled people into labelled rows.

Two sources are read into the same `CensusFrame`:
- a folder of Parquet files `p_<FIPS>.parquet` (one state each). A file that has none of the
  WIDE columns is "narrow" (the shared extract has CA and TX only this way); its people are kept and
  their missing attributes are later filled by hot-deck imputation (generation/sampling/impute.py).
- the official census.gov files: `csv_pus.zip` (members `psam_pus*.csv`), optionally with the housing
  file `csv_hus.zip` (`psam_hus*.csv`) joined on SERIALNO for HHT/HUPAC/HHL.

Codes are kept as PUMS integer codes in pandas nullable small ints; <NA> is the PUMS N/A (blank) code.

Modules, by job: `states` (the state table), `columns` (the PUMS columns read and their types),
`dictionary` (the data dictionary), `readers` (both sources -> CensusFrame), `download` (official files
with a checksum cache), `labels` (sampled people -> labelled rows), `uk` (the UK census teaching files:
NI 2021, Scotland 2011, E&W 2021; the source plug-ins over both are in generation/sources.py).
"""
from __future__ import annotations

from .columns import CORE, EXTRA_HOUSING, EXTRA_PERSON, NOT_NULL, NUMERIC, TYPES, WIDE, person_id
from .dictionary import Dictionary, Variable, read_dictionary, unknown_code_label
from .download import OFFICIAL_URLS, Fetched, download
from .errors import CensusError
from .labels import (
                     ATTRIBUTE_SOURCES,
                     CODE_COLUMNS,
                     GROUP_QUARTERS,
                     LABEL_PREFIX,
                     NOT_WORKED,
                     OUTPUT_COLUMNS,
                     label_people,
)
from .readers import PARQUET_NAME, CensusFrame, read_census
from .states import DIVISIONS, REGIONS, STATES, resolve_states

__all__ = [
    "ATTRIBUTE_SOURCES", "CODE_COLUMNS", "CORE", "DIVISIONS", "EXTRA_HOUSING", "EXTRA_PERSON", "GROUP_QUARTERS",
    "LABEL_PREFIX", "NOT_NULL", "NOT_WORKED", "NUMERIC", "OFFICIAL_URLS", "OUTPUT_COLUMNS", "PARQUET_NAME",
    "REGIONS", "STATES", "TYPES", "WIDE", "CensusError", "CensusFrame", "Dictionary", "Fetched", "Variable",
    "download", "label_people", "person_id", "read_census", "read_dictionary", "resolve_states",
    "unknown_code_label",
]
