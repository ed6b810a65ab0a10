"""Census people -> complete PERSONA personas (the paper's 33 attributes), plus the consistency filter.

One module per job: `attributes` (the 33 attributes, output columns, closed vocabularies), `traits`
(persona ids and procedural traits), `row` (reading a person's row), `rules` (the consistency rules),
`enrich` (the persona_filler asks), `judge` (the consistency_judge asks), `render` (the persona text) and
`stage` (`build_personas`, the stage driver). The JSON-schema checks are in `generation.schema`.
"""
from .attributes import (
                         ATTRIBUTES,
                         CENSUS_ATTRIBUTES,
                         FAMILY_PRESENCE,
                         GROUP_QUARTERS,
                         HOUSEHOLD_TYPES,
                         IDEOLOGIES,
                         LLM_ATTRIBUTES,
                         NOT_APPLICABLE_MINOR,
                         NOT_IN_FAMILY,
                         OUTPUT_COLUMNS,
                         POLITICAL_VIEWS,
                         PROCEDURAL_ATTRIBUTES,
                         RELIGIONS,
                         US_STATES,
                         US_TERRITORIES,
)
from .enrich import (
                         CANDIDATES,
                         FILLER_ROLE,
                         FILLER_SYSTEM,
                         FREE_TIME_MAX,
                         GENERATED_HINTS,
                         GENERATED_MAX,
                         JOB_MAX,
                         LIFESTYLE_MAX,
                         enrichment_ask,
                         enrichment_schema,
                         fields_to_generate,
)
from .judge import JUDGE_ROLE, JUDGE_SCHEMA, JUDGE_SYSTEM, judge_ask, parse_judge
from .render import render_persona
from .rules import RULES, check_rules
from .stage import build_personas, prepare_rows
from .traits import (
                         BIG_FIVE,
                         BIG_FIVE_CUTS,
                         DATA_DIR,
                         big_five,
                         big_five_level,
                         big_five_probabilities,
                         load_list,
                         persona_id,
                         procedural_traits,
)
