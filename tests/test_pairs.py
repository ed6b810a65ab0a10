import math

import pandas as pd
import pyarrow as pa
import pytest

from generation.ids import stable_id
from generation.pairs import (
    COLUMNS,
    CRITIC_INSTRUCTION,
    REVISER_INSTRUCTION,
    PairsError,
    RevisionLimits,
    build_pairs,
    check_revision,
    length_report,
    parse_critique,
    parse_revision,
    revision_budget,
    to_dpo,
)
from generation.prompts import assign

from .helpers import ScriptedRun

# ---------------------------------------------------------------------------------------------- parsers

@pytest.mark.parametrize("text, evaluation, suggestions", [
    ("EVALUATION: Fits their budget.\nSUGGESTIONS: Mention costs.", "Fits their budget.", "Mention costs."),
    ("**EVALUATION:** Fits.\n\n**SUGGESTIONS:** Add costs.", "Fits.", "Add costs."),
    ("**Evaluation**: Fits.\n**Suggestions**: Add costs.", "Fits.", "Add costs."),
    ("## Evaluation\nFits.\n\n## Suggestions\n- add x\n- add y", "Fits.", "- add x\n- add y"),
    ("Sure! Here is my critique.\n\nevaluation: Fits.\nsuggestion: Add costs.", "Fits.", "Add costs."),
    ("SUGGESTIONS: Add costs.\nEVALUATION: Fits.", "Fits.", "Add costs."),
    ("**EVALUATION: Fits well.**\n**SUGGESTIONS: Add costs.**", "Fits well.", "Add costs."),
    ("EVALUATION: Fits.\n---\nSUGGESTIONS: Add costs.\n---", "Fits.", "Add costs."),
    ("### EVALUATION:\nIt fits;\nmostly.\n\n### SUGGESTIONS:\nAdd **two** examples.", "It fits;\nmostly.", "Add **two** examples."),
])
def test_parse_critique_good(text, evaluation, suggestions):
    assert parse_critique(text) == {"evaluation": evaluation, "suggestions": suggestions}


@pytest.mark.parametrize("text, reason", [
    ("The answer is fine for this person.", "missing EVALUATION"),
    ("EVALUATION: fine", "missing SUGGESTIONS"),
    ("EVALUATIONS of it: fine\nSUGGESTIONS: more", "missing EVALUATION"),
    ("My evaluation: fine\nMy suggestions: more", "missing EVALUATION"),
    ("EVALUATION: fine\nSuggestions are below: more", "missing SUGGESTIONS"),
    ("EVALUATION:\nSUGGESTIONS: add costs", "empty EVALUATION"),
    ("EVALUATION: fine\nSUGGESTIONS:   \n", "empty SUGGESTIONS"),
    ("EVALUATION: fine\n**SUGGESTIONS:**", "empty SUGGESTIONS"),
    ("", "missing EVALUATION"),
])
def test_parse_critique_bad(text, reason):
    with pytest.raises(ValueError, match=f"^{reason}$"):
        parse_critique(text)


@pytest.mark.parametrize("text, expected", [
    ("REVISED PREFERENCE: A new answer.", "A new answer."),
    ("**Revised Preference:**\nA new answer.\n\nMore of it.", "A new answer.\n\nMore of it."),
    ("Here you go.\n## REVISED PREFERENCE\nA new answer.", "A new answer."),
    ("revised preference: - point one\n- point two", "- point one\n- point two"),
    ("**REVISED PREFERENCE:** A *new* answer.", "A *new* answer."),
])
def test_parse_revision_good(text, expected):
    assert parse_revision(text) == expected


@pytest.mark.parametrize("text, reason", [
    ("A new answer without the header.", "missing REVISED PREFERENCE"),
    ("REVISED PREFERENCE:   \n", "empty REVISED PREFERENCE"),
    ("REVISED PREFERENCE: ---", "empty REVISED PREFERENCE"),
    ("Your revised preference: here", "missing REVISED PREFERENCE"),
    ("REVISED PREFERENCE: {{", "empty REVISED PREFERENCE"),
    ('{"revised_preference": "{{"}', "empty REVISED_PREFERENCE"),  # SmolLM2's chosen answer in a UK build
    ('{"revised_preference": " ... "}', "empty REVISED_PREFERENCE"),
])
def test_parse_revision_bad(text, reason):
    with pytest.raises(ValueError, match=f"^{reason}$"):
        parse_revision(text)


def test_check_revision():
    check_revision("A different answer.", "An answer.", None)
    with pytest.raises(ValueError, match="^identical$"):
        check_revision("An  answer.\n", " An answer.", None)
    ten = " ".join(["w"] * 10)
    check_revision(" ".join(["v"] * 9), ten, 0.15)      # bounds 8..12 words
    check_revision(" ".join(["v"] * 12), ten, 0.15)
    for n in (7, 13):
        with pytest.raises(ValueError, match="^length$"):
            check_revision(" ".join(["v"] * n), ten, 0.15)


# ------------------------------------------------------------------------------------------ build_pairs

def _inputs():
    personas = pd.DataFrame({"persona_id": ["pa", "pb", "pc"],
                             "persona": ["Age: 71. Retired farmer in Iowa.", "Age: 24. Nurse in Ohio.",
                                         "Age: 45. Teacher in Texas."]})
    questions = ["Should taxes be raised on the rich?", "Is religion good for society?",
                 "Should kids have phones at school?", "Is it fine to eat meat every day?"]
    prompts = pd.DataFrame({"prompt_id": [f"q{i}" for i in range(4)], "text": questions, "topic": "Other"})
    assignment = assign(personas.persona_id, ["q0", "q1", "q2"], ["q3"], seed=0,
                        train_per_persona=3, n_train=2, n_unseen=1).table
    return personas, prompts, assignment


def _retry(ask) -> int:
    """0 for a pair's first revision ask, n for its n-th retry (key revise/<pair>/retry<n>)."""
    return int(ask.key.rsplit("/retry", 1)[1]) if "/retry" in ask.key else 0


def _who(assignment):
    return {r.pair_id: (r.persona_id, r.prompt_id) for r in assignment.itertuples()}


def test_build_pairs_counts_rejects_and_drops_nothing():
    personas, prompts, assignment = _inputs()
    who = _who(assignment)
    pid = {(a, q): p for p, (a, q) in who.items()}
    twenty = " ".join(f"w{i}" for i in range(20))

    def answer(role, ask, attempt):
        if role == "responder":
            return "   " if ask.key == "rejected/q2" else f"{twenty} for {ask.key}"
        pair = ask.key.split("/")[1]
        persona, prompt = who[pair]
        if role == "critic":
            if (persona, prompt) == ("pb", "q1"):
                return "EVALUATION: Not for them."               # never gets SUGGESTIONS
            if (persona, prompt) == ("pa", "q0") and attempt == 0:
                return "It is fine."                              # fixed by the runner's retry
            return f"**EVALUATION:** ok for {persona}.\n**SUGGESTIONS:** tailor it."
        rejected = ask.messages[-1]["content"].split("ANSWER:\n")[1].split("\n\nCRITIQUE:")[0]
        if (persona, prompt) == ("pa", "q1"):
            return f"REVISED PREFERENCE: {rejected}"              # always identical
        if (persona, prompt) == ("pc", "q0") and "/retry" not in ask.key:
            return f"REVISED PREFERENCE:\n{rejected}  "           # identical once, then fixed
        return f"REVISED PREFERENCE: Tailored for {persona}: {rejected} extra words here"

    run = ScriptedRun(answer)  # answer(role, ask, attempt): the runner retries a critique that does not parse
    result = build_pairs(personas, prompts, assignment, run, models={"responder": "org/r@1", "reviser": "org/v@2"})
    table, stats = result.table, result.counts
    asked = run.asked
    revise = [[a for a in asked["reviser"] if _retry(a) == n] for n in range(3)]  # first try, retry1, retry2

    # nothing silently dropped
    rejected_ids = [r["id"] for r in result.rejects]
    assert len(table) + len(rejected_ids) == len(assignment) == 12
    assert set(table.pair_id) | set(rejected_ids) == set(assignment.pair_id)
    assert not set(table.pair_id) & set(rejected_ids)
    assert stats["rejects_by_reason"] == {"empty answer": 3, "missing SUGGESTIONS": 1, "identical": 1}
    assert stats["rejects_by_step"] == {"rejected": 3, "critique": 1, "chosen": 1}
    by_pair = {r["id"]: r for r in result.rejects}
    assert by_pair[pid["pa", "q1"]]["step"] == "chosen" and by_pair[pid["pa", "q1"]]["raw"].startswith("REVISED PREFERENCE: w0")
    assert by_pair[pid["pb", "q1"]]["raw"] == "EVALUATION: Not for them."
    assert {who[p][1] for p, r in by_pair.items() if r["step"] == "rejected"} == {"q2"}
    assert stats["pairs"] == 7 and stats["assigned"] == 12

    # one responder request per distinct prompt, without the persona
    assert list(asked) == ["responder", "critic", "reviser"]
    responder_asks = asked["responder"]
    assert sorted(a.key for a in responder_asks) == ["rejected/q0", "rejected/q1", "rejected/q2", "rejected/q3"]
    text = dict(zip(prompts.prompt_id, prompts.text))
    assert all(a.messages == [{"role": "user", "content": text[a.key.split("/")[1]]}] for a in responder_asks)

    # persona-prefix order: every batch goes out grouped by persona, persona first in an otherwise fixed
    # system message
    for batch in run.batches():
        owners = [who[n.ask.key.split("/")[1]][0] for n in batch if n.role != "responder"]
        assert owners == sorted(owners)
    for role, instruction in (("critic", CRITIC_INSTRUCTION), ("reviser", REVISER_INSTRUCTION)):
        text = dict(zip(personas.persona_id, personas.persona))
        for a in asked[role]:
            assert a.messages[0]["role"] == "system"
            owner = who[a.key.split("/")[1]][0]
            assert a.messages[0]["content"] == f"PERSONA:\n{text[owner]}\n\n{instruction}"
    assert len(asked["critic"]) == 9        # 12 pairs - 3 without a rejected answer
    assert len(revise[0]) == 8              # - 1 critique reject
    retry1, retry2 = revise[1], revise[2]
    assert sorted(who[a.key.split("/")[1]] for a in retry1) == [("pa", "q1"), ("pc", "q0")]
    assert all(a.key.endswith("/retry1") and "NOTE: Your previous rewrite repeated" in a.messages[-1]["content"]
               for a in retry1)
    assert [a.key for a in retry2] == [f"revise/{pid['pa', 'q1']}/retry2"]
    assert stats["revise_retries"] == 3 and stats["requests"] == {"responder": 4, "critic": 9, "reviser": 11}

    # the table, with the model of each answer set by the stage
    assert list(table.columns) == COLUMNS
    assert set(table.rejected_model) == {"org/r@1"} and set(table.chosen_model) == {"org/v@2"}
    keys = [({"train": 0, "test_seen": 1, "test_unseen": 2}[s], a, q)
            for s, a, q in zip(table.split, table.persona_id, table.prompt_id)]
    assert keys == sorted(keys) and table.split.iloc[0] == "train" and table.split.iloc[-1] == "test_unseen"
    row = table.set_index("pair_id").loc[pid["pc", "q0"]]
    assert row.chosen == f"Tailored for pc: {row.rejected} extra words here"   # the retried revision
    assert row.critique == "EVALUATION: ok for pc.\nSUGGESTIONS: tailor it."
    assert row.instruction == "Should taxes be raised on the rich?" and row.persona == "Age: 45. Teacher in Texas."
    assert row.rejected_tokens == 22 and row.chosen_tokens == 30
    # a persona's text and a prompt's answer are held once however many rows repeat them (a paper-size
    # table: ~1.1 GB less), and written as the plain strings they are
    assert list(table.persona.cat.categories) == sorted(set(table.persona)) and table.persona.nunique() == 3
    assert len(table.rejected.cat.categories) == table.prompt_id.nunique()
    from builder.pipeline import arrow_table
    written = arrow_table(table)
    assert written.schema.field("persona").type == written.schema.field("rejected").type == pa.string()
    assert written.column("rejected").to_pylist() == [str(x) for x in table.rejected]
    assert length_report(table, None)["median_chosen_over_rejected"] == round(30 / 22, 4)
    assert stats["length_control"] is None
    assert sum(stats["per_split"].values()) == 7


def test_length_control():
    personas, prompts, assignment = _inputs()
    who = _who(assignment)
    twenty = " ".join(f"w{i}" for i in range(20))            # bounds at 0.2: 16..24 words

    def answer(role, ask, attempt):
        if role == "responder":
            return twenty
        if role == "critic":
            return "EVALUATION: ok.\nSUGGESTIONS: shorter."
        persona, prompt = who[ask.key.split("/")[1]]
        if (persona, prompt) == ("pb", "q0"):
            return "REVISED PREFERENCE: " + " ".join(["long"] * 40)   # always too long
        if (persona, prompt) == ("pc", "q3") and "/retry" not in ask.key:
            return "REVISED PREFERENCE: " + " ".join(["long"] * 30)   # too long once
        return "REVISED PREFERENCE: " + " ".join(["ok"] * 18)

    run = ScriptedRun(answer)
    result = build_pairs(personas, prompts, assignment, run, length_control=0.2)
    table, stats = result.table, result.counts
    assert stats["rejects_by_reason"] == {"length": 1} and stats["length_control"] == 0.2
    assert len(table) + len(result.rejects) == 12 and len(table) == 11
    first = [a for a in run.asked["reviser"] if _retry(a) == 0]
    assert all(a.max_tokens == math.ceil(20 * 1.2) + 16 for a in first)
    assert all(a.messages[-1]["content"].endswith("LENGTH: about 20 words (between 16 and 24).") for a in first)
    retry = [a for a in run.asked["reviser"] if _retry(a) == 1]
    assert sorted(who[a.key.split("/")[1]] for a in retry) == [("pb", "q0"), ("pc", "q3")]
    assert all("NOTE: Your previous rewrite had 40 words; keep it between 16 and 24 words." in a.messages[-1]["content"]
               or "had 30 words" in a.messages[-1]["content"] for a in retry)
    assert set(table.chosen) == {" ".join(["ok"] * 18)}
    # tokens as counted by the double: 1 header word + 18 words ("REVISED" "PREFERENCE:" are 2)
    assert length_report(table, 0.2)["median_chosen_over_rejected"] == 1.0
    # without length control no max_tokens override and no length rule
    run2 = ScriptedRun(answer)
    result = build_pairs(personas, prompts, assignment, run2)
    table2 = result.table
    assert len(table2) == 12 and all(a.max_tokens is None for a in run2.asked["reviser"])


def test_the_revisers_budget_follows_the_answer_it_rewrites():
    personas, prompts, assignment = _inputs()
    long_answer = " ".join(["word"] * 700)  # 700 "tokens"

    def answer(role, ask, attempt):
        if role == "responder":
            return long_answer if ask.key == "rejected/q0" else "A short answer."
        if role == "critic":
            return "EVALUATION: ok.\nSUGGESTIONS: warmer."
        return "REVISED PREFERENCE: better."

    run = ScriptedRun(answer)
    build_pairs(personas, prompts, assignment, run, limits=RevisionLimits(max_tokens=1552, max_model_len=8192))
    budgets = {a.messages[-1]["content"].startswith("QUESTION:\nShould taxes"): a.max_tokens for a in run.asked["reviser"]}
    assert budgets == {True: 2 * 700 + 16, False: 256}  # the long answer's rewrite fits; short ones get 256
    # bounded by the recipe's reviser max_tokens and by the context left after the prompt
    assert revision_budget(900, None, RevisionLimits(1552, 8192)) == 1552
    assert revision_budget(700, None, RevisionLimits(1552, 1024), prompt_tokens=300) == 1024 - 300
    assert revision_budget(3, None, RevisionLimits(48, 8192)) == 48  # a recipe's small max_tokens still rules
    assert revision_budget(20, 0.2, RevisionLimits(1552, 8192)) == math.ceil(20 * 1.2) + 16  # length control
    assert revision_budget(700, None, None) is None  # no limits known: the role's max_tokens


def test_build_pairs_with_nothing_assigned():
    personas, prompts, assignment = _inputs()
    result = build_pairs(personas, prompts, assignment.iloc[:0], ScriptedRun(""))
    table, stats = result.table, result.counts
    assert list(table.columns) == COLUMNS and len(table) == 0
    assert stats["pairs"] == stats["assigned"] == 0
    assert length_report(table, None) == {"pairs": 0, "length_control": None}


def test_build_pairs_rejects_bad_inputs():
    personas, prompts, assignment = _inputs()
    run = ScriptedRun("")
    with pytest.raises(PairsError, match="unknown persona_id 'pz'"):
        build_pairs(personas, prompts, pd.concat([assignment, pd.DataFrame(
            [{"pair_id": stable_id("pz", "q0"), "persona_id": "pz", "prompt_id": "q0", "split": "train"}])]), run)
    with pytest.raises(PairsError, match="prompts lacks column"):
        build_pairs(personas, prompts.rename(columns={"text": "question"}), assignment, run)
    with pytest.raises(PairsError, match="length_control"):
        build_pairs(personas, prompts, assignment, run, length_control=1.5)


def test_to_dpo_puts_the_persona_in_the_prompt():
    prefs = pd.DataFrame([{"pair_id": "x1", "persona_id": "pa", "prompt_id": "q0", "split": "train",
                           "persona": "Age: 71.", "instruction": "Why?", "rejected": "Because.",
                           "critique": "EVALUATION: a\nSUGGESTIONS: b", "chosen": "Well, because.",
                           "rejected_tokens": 2, "chosen_tokens": 3}])
    dpo = to_dpo(prefs)
    assert list(dpo.columns) == ["pair_id", "persona_id", "prompt_id", "split", "prompt", "chosen", "rejected"]
    r = dpo.iloc[0]
    assert r.prompt == [{"role": "system", "content": "About the user you are talking to:\nAge: 71."},
                        {"role": "user", "content": "Why?"}]
    assert r.chosen == [{"role": "assistant", "content": "Well, because."}]
    assert r.rejected == [{"role": "assistant", "content": "Because."}]


@pytest.mark.parametrize("text", [
    "REVISED PREFERENCE: Sure! {content}",
    "REVISED PREFERENCE: Here you go {{{ persona }}}",
    "REVISED PREFERENCE: Fine.<|im_start|>assistant",
    "REVISED PREFERENCE: Fine.\nEVALUATION: the answer was good",
    "REVISED PREFERENCE: Fine.\n**CRITIQUE:** more",
    '{"revised_preference": "[INST] answer"}',
])
def test_template_debris_in_a_revision_is_a_counted_reason(text):
    with pytest.raises(ValueError, match="template_debris"):
        parse_revision(text)


@pytest.mark.parametrize("text", [
    "REVISED PREFERENCE: Use {{ name }} in the Jinja template.\nNote: restart the server.",
    "REVISED PREFERENCE: Question: why? Answer: because.",
])
def test_ordinary_braces_and_notes_are_not_debris(text):
    assert parse_revision(text)


def test_debris_in_a_critique_is_rejected_after_retries():
    from generation.pairs import parse_critique
    with pytest.raises(ValueError, match="template_debris"):
        parse_critique("EVALUATION: ok {persona}\nSUGGESTIONS: more")
    with pytest.raises(ValueError, match="template_debris"):
        parse_critique("EVALUATION: ok\nSUGGESTIONS: more\nREVISED PREFERENCE: a rewrite")


def test_a_revision_with_debris_becomes_a_counted_reject():
    personas, prompts, assignment = _inputs()
    texts = {"responder": "An answer.", "critic": "EVALUATION: fine\nSUGGESTIONS: warmer",
             "reviser": "REVISED PREFERENCE: A warmer answer. {content}"}
    run = ScriptedRun(lambda role, ask, attempt: texts[role])
    result = build_pairs(personas, prompts, assignment, run)
    assert result.table.empty and len(result.rejects) == len(assignment)
    assert {r["step"] for r in result.rejects} == {"chosen"}
    assert all(r["reasons"][0].startswith("template_debris") and "{content}" in r["raw"] for r in result.rejects)
