"""The 50 states + DC (the one state table of the project), census regions and divisions, and the
`states` filter of a recipe."""
from __future__ import annotations

from .errors import CensusError

# 50 states + DC: FIPS -> (postal, name, census region, census division). Region/division are not in
# the Parquet extract but drive stratification and donor matching.
STATES = {
    1: ("AL", "Alabama", 3, 6), 2: ("AK", "Alaska", 4, 9), 4: ("AZ", "Arizona", 4, 8),
    5: ("AR", "Arkansas", 3, 7), 6: ("CA", "California", 4, 9), 8: ("CO", "Colorado", 4, 8),
    9: ("CT", "Connecticut", 1, 1), 10: ("DE", "Delaware", 3, 5), 11: ("DC", "District of Columbia", 3, 5),
    12: ("FL", "Florida", 3, 5), 13: ("GA", "Georgia", 3, 5), 15: ("HI", "Hawaii", 4, 9),
    16: ("ID", "Idaho", 4, 8), 17: ("IL", "Illinois", 2, 3), 18: ("IN", "Indiana", 2, 3),
    19: ("IA", "Iowa", 2, 4), 20: ("KS", "Kansas", 2, 4), 21: ("KY", "Kentucky", 3, 6),
    22: ("LA", "Louisiana", 3, 7), 23: ("ME", "Maine", 1, 1), 24: ("MD", "Maryland", 3, 5),
    25: ("MA", "Massachusetts", 1, 1), 26: ("MI", "Michigan", 2, 3), 27: ("MN", "Minnesota", 2, 4),
    28: ("MS", "Mississippi", 3, 6), 29: ("MO", "Missouri", 2, 4), 30: ("MT", "Montana", 4, 8),
    31: ("NE", "Nebraska", 2, 4), 32: ("NV", "Nevada", 4, 8), 33: ("NH", "New Hampshire", 1, 1),
    34: ("NJ", "New Jersey", 1, 2), 35: ("NM", "New Mexico", 4, 8), 36: ("NY", "New York", 1, 2),
    37: ("NC", "North Carolina", 3, 5), 38: ("ND", "North Dakota", 2, 4), 39: ("OH", "Ohio", 2, 3),
    40: ("OK", "Oklahoma", 3, 7), 41: ("OR", "Oregon", 4, 9), 42: ("PA", "Pennsylvania", 1, 2),
    44: ("RI", "Rhode Island", 1, 1), 45: ("SC", "South Carolina", 3, 5), 46: ("SD", "South Dakota", 2, 4),
    47: ("TN", "Tennessee", 3, 6), 48: ("TX", "Texas", 3, 7), 49: ("UT", "Utah", 4, 8),
    50: ("VT", "Vermont", 1, 1), 51: ("VA", "Virginia", 3, 5), 53: ("WA", "Washington", 4, 9),
    54: ("WV", "West Virginia", 3, 5), 55: ("WI", "Wisconsin", 2, 3), 56: ("WY", "Wyoming", 4, 8),
}
REGIONS = {1: "Northeast", 2: "Midwest", 3: "South", 4: "West"}
DIVISIONS = {1: "New England", 2: "Middle Atlantic", 3: "East North Central", 4: "West North Central",
             5: "South Atlantic", 6: "East South Central", 7: "West South Central", 8: "Mountain",
             9: "Pacific"}


def resolve_states(states) -> list[int] | None:
    """None -> None (all); else sorted FIPS codes from FIPS ints/strings ("06") or postal codes ("CA")."""
    if states is None:
        return None
    if isinstance(states, (str, int)):
        states = [states]
    by_postal = {v[0]: k for k, v in STATES.items()}
    out = set()
    for s in states:
        key = str(s).strip()
        fips = int(key) if key.isdigit() else by_postal.get(key.upper())
        if fips not in STATES:
            raise CensusError(f"unknown state {s!r}: use a FIPS code (e.g. 6 or '06') or a postal code "
                              f"(e.g. 'CA') of the 50 states + DC")
        out.add(fips)
    if not out:
        raise CensusError("states filter is empty: pass None for all states")
    return sorted(out)
