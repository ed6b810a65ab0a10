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
    rejects: list[dict] = field(default_factory=list)  # one per dropped row: {"id", "step", "reason", "raw"}
    source: dict | None = None                         # provenance of the input the stage read, if any
