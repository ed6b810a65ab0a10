import json
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from generation.ids import stable_id
from generation.prompt_sources import HubSource, PromptsError, parse_hf_source, read_file, read_hub, read_prompts
from generation.prompts import (
    CLASSIFY_SCHEMA,
    MAX_PROMPT_CHARS,
    PAPER_HELDOUT_FRACTION,
    TOPICS,
    assign,
    classify,
    filter_prompts,
    normalise,
    pair_ids,
    parse_classification,
    prompt_id,
    read_pool,
    select_prompts,
    split_prompts,
)

from .helpers import ScriptedRun

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures" / "prompts"
PRISM_SHA256 = "cfb158d6619398c0905689326ab03224722a7e030f2371de8e47504325995818"  # from SOURCE.md
FIXTURE_PROMPTS = json.loads((FIXTURES / "prompts.json").read_text())


# ------------------------------------------------------------------------------------------ PRISM file

def test_prism_rule_filter_and_dedup_counts(prism_file):
    prompts, prov = read_prompts(str(prism_file), sha256=PRISM_SHA256)
    assert prov == {"file": prism_file.name, "sha256": PRISM_SHA256, "rows": 8011}
    table, stats = filter_prompts(prompts)
    print(f"\nPRISM rule filter: {stats}")
    assert stats["input"] == 8011
    assert stats["passed_rules"] == 4652           # paper section 3.2 / SOURCE.md
    assert stats["passed_rules"] - stats["duplicates_exact"] == 4620   # SOURCE.md: 4,620 distinct
    assert stats["duplicates_normalised"] == 14    # same text up to case / whitespace
    assert stats["after_dedup"] == len(table) == 4606
    assert stats["too_long"] == 0                  # no PRISM prompt is near MAX_PROMPT_CHARS
    assert stats["no_question_mark"] + stats["too_short"] + stats["passed_rules"] == 8011
    assert table.prompt_id.is_unique
    assert all("?" in t and len(t.split()) >= 5 for t in table.text)


def test_pinned_sha256_mismatch_fails(prism_file):
    with pytest.raises(PromptsError, match=r"prism_opening_prompts\.json: sha256 .* does not match the pinned 00"):
        read_file(prism_file, sha256="00" * 32)


# ------------------------------------------------------------------------------------------ readers

def test_formats_read_the_same_prompts(tmp_path):
    from_json, prov = read_file(FIXTURES / "prompts.json")
    assert from_json == FIXTURE_PROMPTS and prov["rows"] == 9 and len(prov["sha256"]) == 64
    from_jsonl, _ = read_file(FIXTURES / "prompts.jsonl", text_field="opening_prompt")
    assert from_jsonl == FIXTURE_PROMPTS
    pq.write_table(pa.table({"id": list(range(9)), "opening_prompt": FIXTURE_PROMPTS}), tmp_path / "p.parquet")
    from_parquet, prov = read_file(tmp_path / "p.parquet", text_field="opening_prompt")
    assert from_parquet == FIXTURE_PROMPTS and prov["file"] == "p.parquet"
    objects = tmp_path / "objects.json"
    objects.write_text(json.dumps([{"text": p} for p in FIXTURE_PROMPTS]))
    assert read_file(objects)[0] == FIXTURE_PROMPTS


@pytest.mark.parametrize("name, text_field, pattern", [
    ("empty.json", "text", r"empty\.json: empty file"),
    ("not_json.json", "text", r"not_json\.json: not valid JSON at line 4 column 3"),
    ("bad_line4.jsonl", "opening_prompt", r"bad_line4\.jsonl: line 4: not valid JSON"),
    ("bad_row.json", "opening_prompt", r"bad_row\.json: row 3: expected a string or an object with .opening_prompt., got int"),
    ("prompts.jsonl", "text", r"prompts\.jsonl: line 1: no field 'text' \(fields: conversation_id, opening_prompt\)"),
])
def test_malformed_fixture_files_name_file_and_row(name, text_field, pattern):
    with pytest.raises(PromptsError, match=pattern):
        read_file(FIXTURES / name, text_field=text_field)


def test_malformed_rows_name_file_and_row(tmp_path):
    cases = {
        "nonstring.jsonl": ('{"text": "Is this fine or not at all?"}\n{"text": 7}\n', r"nonstring\.jsonl: line 2: field 'text' is int, not a string"),
        "third.json": ('["a?", "b?", 3]', r"third\.json: row 3: expected a string or an object with 'text', got int"),
        "dict.json": ('{"text": "x"}', r"dict\.json: expected a JSON list of prompts, got dict"),
        "blank.jsonl": ("\n  \n", r"blank\.jsonl: empty file"),
        "nolist.json": ("[]", r"nolist\.json: no prompts"),
        "prompts.csv": ("text\nx?\n", r"prompts\.csv: unknown prompts file type '\.csv'"),
    }
    for name, (content, pattern) in cases.items():
        (tmp_path / name).write_text(content)
        with pytest.raises(PromptsError, match=pattern):
            read_file(tmp_path / name)
    pq.write_table(pa.table({"text": ["Is this fine or not at all?", None]}), tmp_path / "null.parquet")
    with pytest.raises(PromptsError, match=r"null\.parquet: row 2: column 'text' is NoneType"):
        read_file(tmp_path / "null.parquet")
    with pytest.raises(PromptsError, match=r"null\.parquet: no column 'prompt' \(columns: text\)"):
        read_file(tmp_path / "null.parquet", text_field="prompt")
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    with pytest.raises(PromptsError, match=r"junk\.parquet: not a readable Parquet file"):
        read_file(tmp_path / "junk.parquet")
    with pytest.raises(PromptsError, match=r"missing\.json: prompts file not found"):
        read_file(tmp_path / "missing.json")


@pytest.mark.parametrize("name, content, pattern", [
    ("latin1.json", b'["Is caf\xe9 au lait fine for you?"]', r"latin1\.json: not UTF-8 text: byte offset 8: "),
    ("bom.json", b'\xef\xbb\xbf["Is this fine for you today?"]', r"bom\.json: starts with a UTF-8 byte-order mark"),
    ("surrogate.json", b'["Is this fine for you \\ud800 today?"]', r"surrogate\.json: row 1: a lone surrogate '\\ud800' at character 22"),
    ("surrogate.jsonl", b'{"text": "ok?"}\n{"text": "Is \\udfff bad?"}\n', r"surrogate\.jsonl: line 2: a lone surrogate"),
    ("utf8_surrogate.jsonl", b'"Is \xed\xa0\x80 bad?"\n', r"utf8_surrogate\.jsonl: not UTF-8 text: byte offset 4: "),
    ("deep.json", b"[" * 100_000 + b"]" * 100_000, r"deep\.json: JSON nested too deeply to read"),
    ("deep.jsonl", b'"Is this fine for you today?"\n' + b"[" * 100_000 + b"]" * 100_000,
     r"deep\.jsonl: line 2: JSON nested too deeply to read"),
])
def test_undecodable_files_name_the_file(tmp_path, name, content, pattern):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(PromptsError, match=pattern):
        read_file(tmp_path / name)


def test_jsonl_rows_may_hold_line_separator_characters(tmp_path):
    prompts = ["Is this\u2028one prompt or two?", "And this \x85 one, is it fine?"]
    f = tmp_path / "p.jsonl"
    f.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in prompts), encoding="utf-8")
    assert read_file(f)[0] == prompts


def test_hf_source_parsing():
    src = parse_hf_source("hf://HannahRoseKirk/prism-alignment@f34f19e924dbee4550a7bef330922f6677450da0:conversations/opening_prompt")
    assert src == HubSource("HannahRoseKirk/prism-alignment", "f34f19e924dbee4550a7bef330922f6677450da0",
                            "conversations", "opening_prompt")
    for bad in ["hf://HannahRoseKirk/prism-alignment:conversations/opening_prompt",   # no revision
                "hf://HannahRoseKirk/prism-alignment@abc:conversations",              # no field
                "hf://HannahRoseKirk/prism-alignment@abc",
                "hf://@abc:conversations/opening_prompt"]:
        with pytest.raises(PromptsError, match="hf://<repo>@<revision>:<config>/<field>"):
            parse_hf_source(bad)
    with pytest.raises(PromptsError, match="pinned by its @revision"):
        read_prompts("hf://a/b@abc:conversations/opening_prompt", sha256="00" * 32)


def test_hub_reader_on_a_local_folder_with_the_prism_layout(tmp_path):
    repo = tmp_path / "prism-alignment"
    shutil.copytree(FIXTURES / "hub" / "prism-alignment", repo)
    src = parse_hf_source(f"hf://{repo}@0123abc:conversations/opening_prompt")
    prompts, prov = read_hub(src, cache_dir=str(tmp_path / "cache"))
    assert prompts == FIXTURE_PROMPTS
    assert prov == {"repo": str(repo), "config": "conversations", "revision": "0123abc", "commit": None, "rows": 9}
    with pytest.raises(PromptsError, match=r"no field 'prompt' \(fields: conversation_id, user_id, opening_prompt\)"):
        read_hub(HubSource(str(repo), "0123abc", "conversations", "prompt"), cache_dir=str(tmp_path / "cache"))


# ------------------------------------------------------------------------------------- rules and ids

def test_filter_counts_every_step():
    table, stats = filter_prompts(FIXTURE_PROMPTS)
    assert stats == {"input": 9, "no_question_mark": 2, "too_short": 1, "too_long": 0, "passed_rules": 6,
                     "duplicates_exact": 1, "duplicates_normalised": 1, "after_dedup": 4}
    # first occurrence kept, source order
    assert list(table.text) == [FIXTURE_PROMPTS[i] for i in (0, 2, 4, 6)]


def test_a_huge_prompt_is_a_counted_reject():
    huge = "Why is " + "very " * (MAX_PROMPT_CHARS // 5) + "long?"
    limit = "Is " + "a" * (MAX_PROMPT_CHARS - 12) + " b c d e?"
    assert len(limit) == MAX_PROMPT_CHARS and len(huge) > MAX_PROMPT_CHARS
    table, stats = filter_prompts([huge, limit, "Is this one fine for you?", "no", "Short?"])
    assert list(table.text) == [limit, "Is this one fine for you?"]
    assert (stats["too_long"], stats["too_short"], stats["no_question_mark"], stats["passed_rules"]) == (1, 1, 1, 2)


def test_prompt_id_is_a_hash_of_the_normalised_text():
    assert normalise("  Is  IT\tok?\n") == "is it ok?"
    assert prompt_id("Is it ok to lie?") == prompt_id(" is it OK  to lie? ") == stable_id("prompt", "is it ok to lie?")
    assert prompt_id("Is it ok to lie?") != prompt_id("Is it ok to steal?")


# ------------------------------------------------------------------------------------------ classifier

@pytest.mark.parametrize("text, expected", [
    ('{"topic": "Abortion", "controversial": true}', {"topic": "Abortion", "controversial": True}),
    ('  {"controversial": false, "topic": "Travel"}\n', {"topic": "Travel", "controversial": False}),
    ('```json\n{"topic": "Other", "controversial": true}\n```', {"topic": "Other", "controversial": True}),
    ('{"topic": "Abortion", "controversial": "yes"}', "controversial not a boolean"),
    ('{"topic": "Sports", "controversial": true}', "unknown topic"),
    ('{"topic": "Abortion"', "not json"),
    ('["Abortion", true]', "not an object"),
    ('', "not json"),
])
def test_parse_classification(text, expected):
    if isinstance(expected, dict):
        assert parse_classification(text) == expected
    else:
        with pytest.raises(ValueError, match=expected):
            parse_classification(text)


def test_classifier_schema_matches_topics():
    assert CLASSIFY_SCHEMA["properties"]["topic"]["enum"] == list(TOPICS)
    assert TOPICS[-1] == "Other" and len(set(TOPICS)) == len(TOPICS) == 24


def _synthetic_prompts(n):
    texts = [f"Synthetic question number {i} about something?" for i in range(n)]
    return pd.DataFrame({"prompt_id": [prompt_id(t) for t in texts], "text": texts})


def test_classify_keeps_controversial_and_counts_rejects():
    table = _synthetic_prompts(30)

    def answer(role, ask, attempt):
        i = int(ask.messages[-1]["content"].split()[4])
        if i % 10 == 3:
            return "I think this is controversial."          # never valid JSON -> reject
        return json.dumps({"topic": TOPICS[i % 5], "controversial": i % 2 == 0})

    run = ScriptedRun(answer)
    kept, stats = classify(table, run, seed=1)
    (role, asks), = run.asked.items()
    assert role == "prompt_classifier" and len(asks) == 30
    assert all(a.schema == CLASSIFY_SCHEMA for a in asks)
    assert len({a.messages[0]["content"] for a in asks}) == 1   # one shared system prompt
    assert stats["classifier_rejects"] == 3 and stats["classifier_rejects_by_reason"] == {"not json": 3}
    assert [r["id"] for r in stats["rejects"]] == list(table.prompt_id.iloc[[3, 13, 23]])
    assert all(r["raw"] == "I think this is controversial." and r["reasons"] == ["not json"] for r in stats["rejects"])
    evens = [i for i in range(30) if i % 2 == 0 and i % 10 != 3]
    assert list(kept.prompt_id) == list(table.prompt_id.iloc[evens])
    assert stats["controversial"] == 15 and stats["not_controversial"] == 12
    assert stats["controversial"] + stats["not_controversial"] + stats["classifier_rejects"] == stats["classified"]
    assert list(kept.topic) == [TOPICS[i % 5] for i in evens]


def test_classify_limit_is_a_seeded_sample():
    table = _synthetic_prompts(100)
    run = ScriptedRun('{"topic": "Other", "controversial": true}')
    kept_a, stats = classify(table, run, seed=7, classify_limit=12)
    asked_a = len(run.asked["prompt_classifier"])
    kept_b, _ = classify(table, run, seed=7, classify_limit=12)
    kept_c, _ = classify(table, run, seed=8, classify_limit=12)
    assert stats["classified"] == 12 and asked_a == 12
    assert list(kept_a.prompt_id) == list(kept_b.prompt_id)
    assert set(kept_a.prompt_id) != set(kept_c.prompt_id)
    positions = [list(table.prompt_id).index(p) for p in kept_a.prompt_id]
    assert positions == sorted(positions)                        # source order kept
    assert len(classify(table, run, seed=7, classify_limit=500)[0]) == 100
    with pytest.raises(PromptsError, match="classify_limit"):
        classify(table, run, seed=7, classify_limit=0)


# ----------------------------------------------------------------------------------------------- split

def _topical_prompts(sizes: dict[str, int]) -> pd.DataFrame:
    rows = [(stable_id("p", t, i), t) for t, n in sizes.items() for i in range(n)]
    return pd.DataFrame(rows, columns=["prompt_id", "topic"])


def test_split_is_stratified_by_topic():
    sizes = dict(zip(TOPICS, [870, 410, 333, 290, 250, 201, 199, 180, 150, 149, 120, 111, 100, 99, 90, 77,
                              66, 55, 44, 33, 22, 11, 5, 3]))
    table = _topical_prompts(sizes)
    assert len(table) == 3868
    out = split_prompts(table, seed=3)
    assert list(out.prompt_id) == list(table.prompt_id)          # row order unchanged
    held = out[out.pool == "heldout"]
    assert len(held) == 868 and (out.pool == "train").sum() == 3000
    counts = held.topic.value_counts()
    for topic, n in sizes.items():
        k = int(counts.get(topic, 0))
        # largest remainder: within one prompt of the exact share, i.e. share within 1/n of 868/3868
        assert abs(k - n * PAPER_HELDOUT_FRACTION) < 1, topic
        assert abs(k / n - PAPER_HELDOUT_FRACTION) < 1 / n
    again = split_prompts(table.sample(frac=1, random_state=0), seed=3)
    assert set(again[again.pool == "heldout"].prompt_id) == set(held.prompt_id)   # order-independent
    other = split_prompts(table, seed=4)
    assert set(other[other.pool == "heldout"].prompt_id) != set(held.prompt_id)
    assert (split_prompts(table, seed=3, heldout_fraction=0.0).pool == "train").all()
    with pytest.raises(PromptsError, match="heldout_fraction"):
        split_prompts(table, seed=3, heldout_fraction=1.0)


def test_split_scales_proportionally():
    out = split_prompts(_topical_prompts({"Abortion": 10, "Travel": 7, "Work": 3}), seed=0)
    assert (out.pool == "heldout").sum() == round(20 * 868 / 3868) == 4


# ------------------------------------------------------------------------------------------ assignment

def _ids(prefix, n):
    return [stable_id(prefix, i) for i in range(n)]


def test_assignment_at_paper_scale():
    personas, train, heldout = _ids("persona", 1586), _ids("train", 3000), _ids("heldout", 868)
    t0, c0 = time.perf_counter(), time.process_time()
    result = assign(personas, train, heldout, seed=0)
    table, stats = result.table, result.counts
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(f"\nassign 1,586 x 200 = {len(table):,} pairs in {wall:.2f} s ({cpu:.2f} s CPU)")
    assert cpu < 3  # ~0.65 s CPU measured; CPU time, because the 2 cores are shared with other jobs
    assert list(table.columns) == ["pair_id", "persona_id", "prompt_id", "split"]
    assert len(table) == 317_200 and table.pair_id.is_unique
    assert stats["per_split"] == {"train": 158_600, "test_seen": 79_300, "test_unseen": 79_300}
    assert not stats["capped"]
    per_persona = table.groupby("persona_id")
    assert (per_persona.size() == 200).all() and len(per_persona) == 1586
    assert (per_persona.prompt_id.nunique() == 200).all()        # no repeated prompt within a persona
    assert table.groupby(["persona_id", "split"]).size().unstack().eq({"train": 100, "test_seen": 50, "test_unseen": 50}).all().all()
    unseen = set(table.prompt_id[table.split == "test_unseen"])
    seen = set(table.prompt_id[table.split != "test_unseen"])
    assert unseen <= set(heldout) and seen <= set(train) and not unseen & seen
    sample = table.sample(50, random_state=0)
    assert list(sample.pair_id) == [stable_id(a, b) for a, b in zip(sample.persona_id, sample.prompt_id)]
    again = assign(personas, train, heldout, seed=0).table
    pd.testing.assert_frame_equal(table, again)
    other = assign(personas, train, heldout, seed=1).table
    assert (other.prompt_id != table.prompt_id).mean() > 0.9


def test_assignment_per_persona_is_independent_of_the_others():
    personas, train, heldout = _ids("persona", 20), _ids("train", 60), _ids("heldout", 20)
    full = assign(personas, train, heldout, seed=5, train_per_persona=12, n_train=8, n_unseen=4).table
    alone = assign(personas[7:8], train, heldout, seed=5, train_per_persona=12, n_train=8, n_unseen=4).table
    mine = full[full.persona_id == personas[7]].reset_index(drop=True)
    pd.testing.assert_frame_equal(mine, alone)
    # prompts are drawn independently per persona: personas do not all get the same prompts
    assert full.groupby("persona_id").prompt_id.apply(frozenset).nunique() == 20


def test_assignment_fails_or_caps_when_pools_are_small():
    personas, train, heldout = _ids("persona", 5), _ids("train", 30), _ids("heldout", 4)
    with pytest.raises(PromptsError, match="needs 150 train-pool and 50 held-out prompts, but the pools have 30 and 4"):
        assign(personas, train, heldout, seed=0)
    result = assign(personas, train, heldout, seed=0, cap=True)
    table, stats = result.table, result.counts
    assert stats["capped"] and stats["effective"] == {"train_per_persona": 30, "n_train": 20, "n_unseen": 4}
    assert stats["per_split"] == {"train": 100, "test_seen": 50, "test_unseen": 20}
    assert (table.groupby("persona_id").prompt_id.nunique() == 34).all()
    with pytest.raises(PromptsError, match="both the train and the held-out pool"):
        assign(personas, train, train[:3], seed=0, train_per_persona=5, n_train=3, n_unseen=2)
    with pytest.raises(PromptsError, match="duplicate persona ids"):
        assign(personas + personas[:1], train, heldout, seed=0, train_per_persona=5, n_train=3, n_unseen=2)


def test_pair_ids_equal_stable_id_also_for_ids_json_escapes():
    a = ["p1", 'we"ird', "back\\slash", "tab\tid", "ünï", 7]
    b = ["q1", "q2", 'q"3', "q4", "ç", "q6"]
    assert pair_ids(a, b) == [stable_id(x, y) for x, y in zip(a, b)]


# ---------------------------------------------------------------------------------------- whole stage

def test_select_prompts_end_to_end_on_a_fixture():
    def answer(role, ask, attempt):
        controversial = "boil an egg" not in ask.messages[-1]["content"]
        return json.dumps({"topic": "Other", "controversial": controversial})

    result = select_prompts(str(FIXTURES / "prompts.jsonl"), ScriptedRun(answer), seed=0,
                            text_field="opening_prompt", heldout_fraction=0.34)
    table, stats = result.table, result.counts
    assert result.source["rows"] == 9 and result.rejects == [] and stats["filter"]["after_dedup"] == 4
    assert stats["classify"]["controversial"] == 3 and stats["classify"]["not_controversial"] == 1
    assert list(table.columns) == ["prompt_id", "text", "topic", "pool"]
    assert list(table.text) == [FIXTURE_PROMPTS[i] for i in (0, 2, 4)]
    assert stats["split"] == {"heldout_fraction": 0.34, "train": 2, "heldout": 1}
    assert Counter(table.pool) == {"train": 2, "heldout": 1}


def test_hub_branch_is_recorded_as_the_commit_read(tmp_path):
    """`hf://repo@main:...` on the test Hub (tests/hub_server.py): the provenance names the commit that
    main pointed to, and the prompts are read at that commit."""
    from tests.hub_server import Blob, HubServer, Repo

    from .helpers import env

    hub = HubServer().start()
    try:
        repo = hub.state.repos["persona-test/prism"] = Repo("persona-test/prism", private=False)
        files = {p.name: Blob(p.read_bytes(), lfs=False) for p in (FIXTURES / "hub" / "prism-alignment").iterdir()}
        commit = hub.state.new_commit(repo, None, "prompts", files)
        repo.branches["main"] = commit.oid
        code = ("import json, sys; from generation.prompt_sources import read_prompts\n"
                "try:\n    print(json.dumps(read_prompts(sys.argv[1])[1]))\n"
                "except Exception as e:\n    print(type(e).__name__, e)")
        hub_env = env(HF_ENDPOINT=hub.url, HF_HUB_OFFLINE="0", HF_DATASETS_OFFLINE="0", HF_HUB_DISABLE_XET="1",
                      HF_HOME=tmp_path / "hf", HF_DATASETS_CACHE=tmp_path / "datasets")

        def read(source):
            p = subprocess.run([sys.executable, "-c", code, source], env=hub_env, cwd=ROOT, capture_output=True,
                               text=True, timeout=300)
            assert p.returncode == 0, p.stderr[-3000:]
            return p.stdout.strip().splitlines()[-1]

        prov = json.loads(read("hf://persona-test/prism@main:conversations/opening_prompt"))
        assert prov == {"repo": "persona-test/prism", "config": "conversations", "revision": "main",
                        "commit": commit.oid, "rows": 9}
        line = read("hf://persona-test/prism@no-such-branch:conversations/opening_prompt")
        assert line.startswith("PromptsError hf://persona-test/prism@no-such-branch: cannot resolve the revision")
    finally:
        hub.stop()


# ------------------------------------------------------------------------- read before any model request

NONE_PASS = ["Hi", "Tell me a story about a dog.", "Why?", "x" * (MAX_PROMPT_CHARS + 1) + " is this one too long?"]


def test_a_source_where_no_prompt_passes_is_one_line(tmp_path):
    path = tmp_path / "prompts.json"
    path.write_text(json.dumps(NONE_PASS))
    with pytest.raises(PromptsError) as e:
        read_pool(str(path))
    assert str(e.value) == (f"{path}: none of its 4 prompts passes the rules (a '?', at least 5 words, at most "
                            f"{MAX_PROMPT_CHARS:,} characters): 2 without '?', 1 too short, 1 too long")
    table, stats, provenance = read_pool(str(FIXTURES / "prompts.jsonl"), "opening_prompt")
    assert len(table) == stats["after_dedup"] == 4 and provenance["rows"] == 9


def test_the_prompts_are_checked_before_any_model_request(tmp_path):
    """A bad prompts file stops the build before the census is read or a model asked (it used to cost
    the persona stage's requests first; a file where no prompt passes said "no preference pair survived").
    A file that is not JSON takes the same path (read_pool), before the census too."""
    from .helpers import build, one_line_error, recipe_data, write_recipe

    model = tmp_path / "model"  # the start-up check needs a folder that looks like a model; none is loaded
    model.mkdir()
    (model / "config.json").write_text("{}")
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps(NONE_PASS))
    recipe = write_recipe(tmp_path / "r.toml", recipe_data(model, prism=prompts))
    p = build(recipe, tmp_path / "out", tmp_path / "work")
    line = one_line_error(p)
    assert line.startswith(f"persona: error: {prompts}: none of its 4 prompts passes the rules"), line
    assert "census" not in p.stderr and not list((tmp_path / "work").rglob("requests.sqlite"))
