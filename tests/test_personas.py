import json
import re

import pandas as pd
import pytest

from generation import personas as P
from generation.schema import parse_json, union_schema, validate

from .helpers import ScriptedRun

SEED = 7


def person(**kw) -> dict:
    """A contract-shaped census person: 34-year-old married woman, householder of a housing unit."""
    row = dict(
        source_serialno="2024HU0000001", source_sporder=1, state="Missouri", age=34, sex="Female",
        race="White alone", education="Bachelor's degree", employment_status="Civilian employed, at work",
        class_of_worker="Employee of a private not-for-profit, tax-exempt, or charitable organization",
        industry_category="MED-Offices Of Physicians", occupation_category="HLS-Medical Assistants",
        income="$42,000", marital_status="Married", citizenship="Born in the United States", nativity="Native",
        veteran_status="Never served in the military", disability="Without a disability",
        health_insurance="With health insurance coverage", cognitive_difficulty="No",
        ability_to_speak_english="N/A (speaks only English)", household_language="English only",
        vision_difficulty="No", hearing_difficulty="No", fertility="No",
        ancestry=None, place_of_birth=None, household_type=None, family_presence_and_age=None,
        imputed_fields=[], generated_fields=["ancestry", "place_of_birth", "household_type", "family_presence_and_age"],
        code_AGEP=34, code_SCHL=21, code_MAR=1, code_ESR=1, code_MIL=4, code_FER=2,
    )
    row.update(kw)
    if "age" in kw and "code_AGEP" not in kw:
        row["code_AGEP"] = kw["age"]
    return row


def child(serial: str, sporder: int = 3, age: int = 10, **kw) -> dict:
    base = dict(source_serialno=serial, source_sporder=sporder, age=age, education="Grade 4",
                employment_status="N/A (less than 16 years old)", marital_status="Never married or under 15 years old",
                code_SCHL=7, code_MAR=5, code_ESR=None, code_MIL=None, code_FER=None, fertility="N/A")
    return person(**{**base, **kw})


# ---------------------------------------------------------------- curated lists

@pytest.mark.parametrize("name", ["quirks", "mannerisms", "core_values"])
def test_lists_are_large_unique_and_clean(name):
    items = P.load_list(name)
    assert len(items) >= 100
    assert all(s.strip() == s and s for s in items)
    assert len({s.lower() for s in items}) == len(items), "duplicates"


# ---------------------------------------------------------------- procedural traits

def test_procedural_traits_deterministic_and_seeded():
    a = P.procedural_traits("abc123", SEED)
    assert a == P.procedural_traits("abc123", SEED)
    assert re.fullmatch(r"Openness: [A-Za-z ]+, Conscientiousness: [A-Za-z ]+, Extraversion: [A-Za-z ]+, "
                        r"Agreeableness: [A-Za-z ]+, Neuroticism: [A-Za-z ]+", a["big_five_scores"])
    assert a["defining_quirks"] in P.load_list("quirks")
    assert a["mannerisms"] in P.load_list("mannerisms")
    assert len(a["core_values"].split(", ")) == 3
    others = [P.procedural_traits("abc123", s) for s in range(1, 6)]
    assert any(o != a for o in others)
    assert P.procedural_traits("abc124", SEED) != a


def test_big_five_bucket_frequencies_match_normal():
    probs = P.big_five_probabilities()
    assert probs == pytest.approx({"Extremely Low": 0.02275, "Low": 0.13591, "Average": 0.68269,
                                   "High": 0.13591, "Extremely High": 0.02275}, abs=1e-4)
    counts = {level: 0 for level in probs}
    draws = 20_000
    for i in range(draws):
        for level in P.big_five(f"p{i}", SEED).values():
            counts[level] += 1
    for level, p in probs.items():
        assert counts[level] / (5 * draws) == pytest.approx(p, abs=0.006), level


def test_persona_id_stable_and_seeded():
    assert P.persona_id("2024HU1", 2, 1) == P.persona_id("2024HU1", 2, 1)
    assert P.persona_id("2024HU1", 2, 1) != P.persona_id("2024HU1", 2, 2)
    assert P.persona_id("2024HU1", 2, 1) != P.persona_id("2024HU1", 3, 1)


# ---------------------------------------------------------------- rule checks

US = "Born in the United States"
NAT = "U.S. citizen by naturalization"
LIVING_ALONE_F = "Female householder, no spouse/partner present, living alone"
MARRIED_KIDS = "Married couple household with children of the householder less than 18"
# (rule, overrides that break it, overrides that keep it)
RULE_CASES = [
    ("education_exceeds_age", dict(age=10, code_SCHL=22), dict(age=10, code_SCHL=7)),
    ("education_exceeds_age", dict(age=5, code_SCHL=8), dict(age=25, code_SCHL=24)),
    ("married_under_15", dict(age=12, code_MAR=1), dict(age=12, code_MAR=5)),
    ("fertility_out_of_universe", dict(sex="Male", code_FER=2), dict(sex="Male", code_FER=None)),
    ("fertility_out_of_universe", dict(age=60, code_FER=2), dict(age=45, code_FER=2)),
    ("employed_under_16", dict(age=14, code_ESR=1), dict(age=14, code_ESR=None)),
    ("military_under_17", dict(age=15, code_MIL=4), dict(age=15, code_MIL=None)),
    ("minor_party_politics", dict(age=16, political_views="Democrat"),
     dict(age=16, political_views=P.NOT_APPLICABLE_MINOR)),
    ("child_ideology", dict(age=10, ideology="Liberal"), dict(age=15, ideology="Liberal")),
    ("adult_marked_minor", dict(political_views=P.NOT_APPLICABLE_MINOR), dict(political_views="Independent")),
    ("birthplace_vs_citizenship", dict(citizenship=US, place_of_birth="Mexico"),
     dict(citizenship=US, place_of_birth="Texas")),
    ("birthplace_vs_citizenship", dict(code_CIT=2, place_of_birth="Ohio"), dict(code_CIT=2, place_of_birth="Guam")),
    ("birthplace_vs_citizenship", dict(citizenship=NAT, place_of_birth="Ohio"),
     dict(citizenship=NAT, place_of_birth="Vietnam")),
    ("household_language_conflict", dict(ability_to_speak_english="Not well"),
     dict(ability_to_speak_english="Not well", household_language="Spanish")),
    ("household_language_conflict", dict(code_ENG=4, code_LANX=1), dict(code_ENG=None, code_LANX=2)),
    ("living_alone_conflict", dict(source_sporder=2, household_type=LIVING_ALONE_F),
     dict(household_type=LIVING_ALONE_F, code_MAR=3)),
    ("householder_sex_mismatch", dict(sex="Male", household_type=LIVING_ALONE_F),
     dict(sex="Female", household_type=LIVING_ALONE_F)),
    ("householder_sex_mismatch", dict(code_SEX=2, household_type="Nonfamily household: Male householder: Living alone"),
     dict(code_SEX=2, household_type="Nonfamily household: Female householder: Living alone")),
    ("householder_marriage_mismatch", dict(code_MAR=3, household_type=MARRIED_KIDS),
     dict(code_MAR=1, household_type=MARRIED_KIDS)),
    ("group_quarters_mismatch", dict(source_serialno="2024GQ0000002", household_type=MARRIED_KIDS),
     dict(source_serialno="2024GQ0000002", household_type=P.GROUP_QUARTERS, family_presence_and_age=P.GROUP_QUARTERS)),
    ("group_quarters_mismatch", dict(household_type=P.GROUP_QUARTERS), dict(household_type=MARRIED_KIDS)),
    ("householder_family_mismatch", dict(household_type=MARRIED_KIDS, family_presence_and_age="No related children"),
     dict(household_type=MARRIED_KIDS, family_presence_and_age="With related children 5 to 17 years only")),
    ("householder_family_mismatch", dict(household_type=LIVING_ALONE_F, family_presence_and_age="No related children"),
     dict(household_type=LIVING_ALONE_F, family_presence_and_age=P.NOT_IN_FAMILY)),
    ("child_family_mismatch", dict(age=8, source_sporder=3, code_MAR=5, family_presence_and_age="No related children"),
     dict(age=8, source_sporder=3, code_MAR=5, family_presence_and_age="With related children 5 to 17 years only")),
    ("young_retiree", dict(age=25, detailed_job_description="Retired from teaching"),
     dict(age=70, detailed_job_description="Retired from teaching")),
    ("dollars_outside_the_us", dict(country="United Kingdom", state="Scotland", income="$30,000 per year"),
     dict(country="United Kingdom", state="Scotland", income="£30,000 a year")),
]


@pytest.mark.parametrize("code,bad,good", RULE_CASES, ids=[c[0] for c in RULE_CASES])
def test_rule_fails_and_passes(code, bad, good):
    assert code in P.check_rules(person(**bad))
    assert code not in P.check_rules(person(**good))


def test_every_rule_has_a_case():
    assert {c[0] for c in RULE_CASES} == set(P.RULES)


def test_rules_skip_missing_fields():
    assert P.check_rules(person()) == []
    assert P.check_rules({"age": 30}) == []


# ---------------------------------------------------------------- enrichment schema and parse

def _prepared(**kw) -> dict:
    return P.prepare_rows(pd.DataFrame([person(**kw)]), SEED, 0)[0]


def _answer(**kw) -> dict:
    ans = {"ancestry": "Irish", "household_type": MARRIED_KIDS,
           "family_presence_and_age": "With related children 5 to 17 years only", "place_of_birth": "Missouri",
           "detailed_job_description": "Takes vital signs and schedules appointments at a family clinic.",
           "personal_time": "Gardening and church choir", "lifestyle": "Busy and family-centred",
           "ideology": "Moderate", "political_views": "Independent", "religion": "Catholic"}
    ans.update(kw)
    return ans


def test_enrichment_schema_fields_and_enums():
    schema = P.enrichment_schema(_prepared())
    assert list(schema["properties"]) == ["ancestry", "household_type", "family_presence_and_age", "place_of_birth",
                                          *P.LLM_ATTRIBUTES]
    assert schema["required"] == list(schema["properties"])
    assert all("enum" in p or p["maxLength"] <= 200 for p in schema["properties"].values())
    assert set(schema["properties"]["place_of_birth"]["enum"]) == set(P.US_STATES)
    assert P.NOT_APPLICABLE_MINOR not in schema["properties"]["political_views"]["enum"]
    # a female householder is never offered a male-householder household type
    assert not any(h.startswith("Male") for h in schema["properties"]["household_type"]["enum"])
    minor = P.enrichment_schema(_prepared(**child("2024HU0000009", age=12)))
    assert minor["properties"]["political_views"]["enum"] == [P.NOT_APPLICABLE_MINOR]
    assert minor["properties"]["ideology"]["enum"] == [P.NOT_APPLICABLE_MINOR]
    # options are restricted by the rules a candidate would newly break, even if the row breaks one already
    odd = P.enrichment_schema(_prepared(**child("2024HU0000009", age=12, code_SCHL=21)))
    assert odd["properties"]["political_views"]["enum"] == [P.NOT_APPLICABLE_MINOR]
    foreign = P.enrichment_schema(_prepared(citizenship=NAT))
    assert "enum" not in foreign["properties"]["place_of_birth"]
    # a missing census attribute not listed in generated_fields is generated too
    assert "income" in P.enrichment_schema(_prepared(income=None))["properties"]


def test_parse_valid_and_invalid():
    schema = P.enrichment_schema(_prepared())
    good = _answer()
    assert parse_json(json.dumps(good), schema) == good
    bad_cases = {
        "invalid JSON": '{"ancestry": "Irish",',
        "not an allowed value": json.dumps(_answer(religion="Pastafarian")),
        "missing": json.dumps({k: v for k, v in good.items() if k != "religion"}),
        "longer than": json.dumps(_answer(lifestyle="x" * 500)),
        "unexpected": json.dumps({**good, "hobby": "chess"}),
        "too short": json.dumps(_answer(personal_time="   ")),
        "expected a string": json.dumps(_answer(ancestry=5)),
        "expected an object": "[]",
    }
    for reason, text in bad_cases.items():
        with pytest.raises(ValueError, match=reason):
            parse_json(text, schema)


def test_parse_judge():
    assert P.parse_judge('{"reason":"fine","consistent":true}') == {"reason": "fine", "consistent": True}
    for text in ('{"reason":"fine","consistent":"yes"}', '{"consistent":true}', "true"):
        with pytest.raises(ValueError):
            P.parse_judge(text)


def test_union_schema_accepts_what_any_member_accepts():
    adult = P.enrichment_schema(_prepared())
    minor = P.enrichment_schema(_prepared(**child("2024HU0000009", age=12)))
    foreign = P.enrichment_schema(_prepared(citizenship=NAT, generated_fields=["place_of_birth"], ancestry="Polish",
                                            household_type=MARRIED_KIDS, family_presence_and_age="No related children"))
    union = union_schema([adult, minor, foreign])
    assert set(union["properties"]["political_views"]["enum"]) == set(P.POLITICAL_VIEWS + [P.NOT_APPLICABLE_MINOR])
    assert "enum" not in union["properties"]["place_of_birth"]
    assert union["required"] == ["place_of_birth", *P.LLM_ATTRIBUTES]
    ans = _answer(political_views=P.NOT_APPLICABLE_MINOR)
    validate(ans, union)
    with pytest.raises(ValueError):
        validate(ans, adult)


def test_asks_and_rendering():
    row = _prepared()
    ask = P.enrichment_ask(row)
    assert ask.key == f"enrich/{row['persona_id']}"
    assert ask.messages[0] == {"role": "system", "content": P.FILLER_SYSTEM}
    user = ask.messages[1]["content"]
    assert "age: 34" in user and "core values: " in user and "- place_of_birth:" in user
    assert "household role: householder" in user
    row.update(_answer())
    text = P.render_persona(row)
    lines = text.splitlines()
    assert text.endswith("\n") and len(lines) == len(P.ATTRIBUTES)
    assert [ln.split(": ", 1)[0] for ln in lines] == [a.replace("_", " ") for a in P.ATTRIBUTES]
    assert lines[0] == "age: 34" and lines[1] == "sex: Female"
    assert "big five scores: Openness: " in text and "ability to speak english: " in text
    judge = P.judge_ask(row)
    assert judge.key == f"judge/{row['persona_id']}" and text in judge.messages[1]["content"]
    row["religion"] = None
    with pytest.raises(ValueError, match="religion"):
        P.render_persona(row)


# ---------------------------------------------------------------- build_personas with a scripted run (test double)

def _from_schema(schema: dict, pid: str) -> dict:
    """A schema-conforming answer: first allowed option, or a short plain text."""
    return {k: p["enum"][0] if "enum" in p else f"Plain {k.replace('_', ' ')} for {pid[:6]}"
            for k, p in schema["properties"].items()}


def scripted(judge_says_no=(), filler_fails=(), overrides=None) -> ScriptedRun:
    """A Run answering from the Ask's schema, with scripted failures: the filler's answer for
    `filler_fails` is cut off (never valid JSON); the judge finds `judge_says_no` inconsistent."""
    def answer(role, ask, attempt):
        pid = ask.key.split("/", 1)[1]
        if role != P.FILLER_ROLE:
            return json.dumps({"reason": "checked", "consistent": pid not in judge_says_no})
        if pid in filler_fails:
            return '{"ancestry": "Iri'
        return json.dumps({**_from_schema(ask.schema, pid), **(overrides or {}).get(pid, {})})
    return ScriptedRun(answer)


def _pid(serial, sporder=1):
    return P.persona_id(serial, sporder, SEED)


def _setup():
    people = pd.DataFrame([
        person(source_serialno="2024HU0000001"),
        person(source_serialno="2024HU0000002", sex="Male", code_FER=None, code_MAR=5, marital_status="Never married"),
        child("2024HU0000002", code_MAR=1),                      # married at 10: rejected before any LLM call
        person(source_serialno="2024HU0000003", age=25),         # the judge says inconsistent
        person(source_serialno="2024HU0000004"),                 # the filler never produces valid JSON
        child("2024HU0000005", sporder=2, age=12),               # answers "Democrat": outside its own schema
        person(source_serialno="2024HU0000006", age=26),         # "retired" at 26: rule after enrichment
    ])
    pool = pd.DataFrame([person(source_serialno=f"2024HU00001{i:02d}", age=30 + i) for i in range(10)]
                        + [child("2024GQ0000900", sporder=1, age=17)])
    draws = []

    def draw_more(k, rnd, exclude):
        draws.append((k, rnd, set(exclude)))
        fresh = pool[[(s, o) not in exclude for s, o in zip(pool.source_serialno, pool.source_sporder)]]
        return fresh.iloc[:k]

    run = scripted(
        judge_says_no={_pid("2024HU0000003")}, filler_fails={_pid("2024HU0000004")},
        overrides={_pid("2024HU0000005", 2): {"political_views": "Democrat"},
                   _pid("2024HU0000006"): {"detailed_job_description": "Retired early from software work"}})
    return people, draw_more, run, draws


def test_build_personas_replaces_rejects_and_counts_reasons():
    people, draw_more, run, draws = _setup()
    result = P.build_personas(people, draw_more, run, n=6, seed=SEED)
    out, stats = result.table, result.counts

    assert len(out) == 6 and list(out.columns) == P.OUTPUT_COLUMNS
    for a in P.ATTRIBUTES:
        assert out[a].map(lambda v: v is not None and str(v).strip() != "").all(), a
    assert out.persona_id.is_unique
    assert stats["rejected"] == {"enrichment_failed": 2, "judge_inconsistent": 1, "married_under_15": 1,
                                 "young_retiree": 1}
    assert stats["rejected_personas"] == 5
    assert stats["enrichment_rejects"] == 2 and stats["judge_rejects"] == 1 and stats["judge_failures"] == 0
    assert stats["drawn"] == 7 + 4 and stats["accepted"] == 6 and stats["shortfall"] == 0
    assert stats["rounds"] == 1
    # one replacement round for the 4 missing, excluding everyone already seen
    assert draws == [(4, 1, {(s, int(o)) for s, o in zip(people.source_serialno, people.source_sporder)})]
    assert out.replacement_round.tolist() == [0, 0, 1, 1, 1, 1]
    # the married 10-year-old never reached the model
    assert f"enrich/{_pid('2024HU0000002', 3)}" not in [a.key for a in run.asked["persona_filler"]]
    # only people passing the post-enrichment rules were judged
    assert f"judge/{_pid('2024HU0000006')}" not in [a.key for a in run.asked["consistency_judge"]]
    # the persona text is the rendering of the row
    first = out.iloc[0]
    assert first.persona == P.render_persona(first.to_dict())
    assert first.generated_fields == ["ancestry", "household_type", "family_presence_and_age", "place_of_birth"]


def test_build_personas_is_deterministic():
    a = P.build_personas(*_setup()[:3], n=6, seed=SEED)
    b = P.build_personas(*_setup()[:3], n=6, seed=SEED)
    pd.testing.assert_frame_equal(a.table, b.table)
    assert (a.counts, a.rejects) == (b.counts, b.rejects)
    c = P.build_personas(*_setup()[:3], n=6, seed=SEED + 1).table
    assert set(c.persona_id).isdisjoint(a.table.persona_id)


def test_build_personas_minor_and_group_quarters():
    people = pd.DataFrame([child("2024HU0000010", age=15), child("2024GQ0000011", sporder=1, age=17)])
    result = P.build_personas(people, lambda k, r, e: people.iloc[:0], scripted(), n=2, seed=SEED)
    out, stats = result.table, result.counts
    assert len(out) == 2 and stats["rejected"] == {}
    assert (out.political_views == P.NOT_APPLICABLE_MINOR).all()
    gq = out[out.source_serialno == "2024GQ0000011"].iloc[0]
    assert gq.household_type == P.GROUP_QUARTERS and gq.family_presence_and_age == P.GROUP_QUARTERS


def test_build_personas_shortfall_when_draws_run_out():
    people = pd.DataFrame([person(source_serialno=f"2024HU00000{i}") for i in range(3)])
    draws = []

    def draw_more(k, rnd, exclude):
        draws.append(rnd)
        return people.iloc[:0]

    run = scripted(judge_says_no={_pid("2024HU000001")})
    result = P.build_personas(people, draw_more, run, n=3, seed=SEED, max_rounds=2, source={"source": "census.csv"})
    out, stats = result.table, result.counts
    assert len(out) == 2 and stats["shortfall"] == 1 and draws == [1]
    assert result.source == {"source": "census.csv"}  # the stage records its own provenance
    assert result.rejects[0]["step"] == "consistency" and result.rejects[0]["reasons"] == ["judge_inconsistent"]
    assert result.rejects[0]["raw"] == "checked"  # the judge's detail, as the rejects config stores it


def test_build_personas_stops_after_max_rounds():
    people = pd.DataFrame([person(source_serialno="2024HU0000001")])
    pool = pd.DataFrame([person(source_serialno=f"2024HU00009{i}") for i in range(9)])

    def draw_more(k, rnd, exclude):
        return pool[[s not in {e[0] for e in exclude} for s in pool.source_serialno]].iloc[:k]

    everyone = {P.persona_id(s, 1, SEED) for s in list(pool.source_serialno) + ["2024HU0000001"]}
    result = P.build_personas(people, draw_more, scripted(judge_says_no=everyone), n=1, seed=SEED, max_rounds=3)
    out, stats = result.table, result.counts
    assert len(out) == 0 and stats["drawn"] == 4 and stats["rounds"] == 3
    assert stats["rejected"] == {"judge_inconsistent": 4}


def test_prompt_for_group_quarters_and_coarse_language():
    row = P.prepare_rows(pd.DataFrame([person(
        source_serialno="2024GQ0000003", household_language="A language other than English",
        ability_to_speak_english="Well", code_LANX=1, code_ENG=2,
        generated_fields=["household_language", "ancestry", "place_of_birth", "household_type",
                          "family_presence_and_age"])]), SEED, 0)[0]
    ask = P.enrichment_ask(row)
    user = ask.messages[1]["content"]
    assert "household role: lives in group quarters" in user
    assert "- household_language: " in user and "(census category: A language other than English)" in user
    assert "household language:" not in user.split("Also fill in:")[0]  # generated fields are not shown as known
    props = ask.schema["properties"]
    assert props["household_type"]["enum"] == [P.GROUP_QUARTERS]
    assert props["family_presence_and_age"]["enum"] == [P.GROUP_QUARTERS]
    assert props["household_language"]["maxLength"] == P.GENERATED_MAX
    # answering "English only" for someone who speaks another language at home is caught by the rules
    assert "household_language_conflict" in P.check_rules({**row, "household_language": "English only"})
