"""The error every bad census input raises."""
from __future__ import annotations

from ..errors import PersonaError


class CensusError(PersonaError, ValueError):
    """Bad census input; the message names the file (zip:member for official files), the column and,
    where it applies, the row (0-based data row, header not counted) and the code."""
