"""What every stage returns: its table, its counts and the rows it dropped, in one small type (the
shape of datatrove's uniform step statistics). The builder reads these fields; it never reshapes a
stage's private dicts."""
from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd


@dataclass
class StageResult:
    table: pd.DataFrame
    counts: dict                                       # JSON-able numbers, as manifest.json records them
    # one per dropped row, as the rejects config stores it: {"id": str, "step": str, "reasons": list[str]
    # (every rule a row broke, else one parse or check reason), "raw": the model's text or detail, or None}
    rejects: list[dict] = field(default_factory=list)
    source: dict | None = None                         # provenance of the input the stage read, if any
