"""The consistency judge (role "consistency_judge"): one ask per enriched person, on the rendered persona."""
from __future__ import annotations

from collections.abc import Mapping

from generation.flow import Ask, Outcome
from generation.schema import parse_json

from .render import render_persona

JUDGE_ROLE = "consistency_judge"
# The reason comes before the verdict so the model states the evidence before deciding.
JUDGE_SCHEMA = {
    "type": "object",
    "properties": {"reason": {"type": "string", "minLength": 2, "maxLength": 200},
                   "consistent": {"type": "boolean"}},
    "required": ["reason", "consistent"],
    "additionalProperties": False,
}
JUDGE_SYSTEM = (
    "You check synthetic person profiles for a research dataset. A profile is inconsistent only if it has "
    "a clear contradiction or something practically impossible, e.g. a 10-year-old with a master's degree, "
    "a child with a party affiliation, a job description that does not fit the occupation, or a birthplace "
    "that contradicts citizenship. Unusual but possible combinations are consistent; personality, quirks and "
    "hobbies never make a profile inconsistent on their own. Answer in JSON: reason (one short sentence), "
    "then consistent (true or false)."
)


def parse_judge(text: str) -> dict:
    return parse_json(text, JUDGE_SCHEMA)


def judge_ask(row: Mapping) -> Ask:
    user = "Profile:\n" + render_persona(row) + "\nIs this profile consistent?"
    return Ask(key=f"judge/{row['persona_id']}",
               messages=[{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}],
               schema=JUDGE_SCHEMA)


def judge_one(row: dict, out: Outcome, reject) -> bool:
    """Apply the judge's verdict: True (and the persona text set) when the row is judged consistent."""
    if not out.ok:
        reject(row, ["judge_failed"], out.reason)
        return False
    if not out.value["consistent"]:
        reject(row, ["judge_inconsistent"], out.value["reason"])
        return False
    row["persona"] = render_persona(row)
    return True
