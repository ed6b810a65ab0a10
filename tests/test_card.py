import copy
import re
from pathlib import Path

import pytest
from datasets import Features, List, Value
from datasets.info import DatasetInfosDict
from datasets.utils.metadata import MetadataConfigs
from huggingface_hub import DatasetCard

from dataset_card.card import attribute_tvd, plot_fidelity, render_card

MESSAGES = List({"role": Value("string"), "content": Value("string")})
FEATURES = {
    "preferences": Features({"pair_id": Value("string"), "chosen": MESSAGES, "rejected": MESSAGES,
                             "chosen_tokens": Value("int32")})._to_yaml_list(),
    "dpo": Features({"pair_id": Value("string"), "prompt": MESSAGES, "chosen": MESSAGES,
                     "rejected": MESSAGES})._to_yaml_list(),
    "personas": Features({"persona_id": Value("string"), "age": Value("int32")})._to_yaml_list(),
    "prompts": Features({"prompt_id": Value("string"), "question": Value("string")})._to_yaml_list(),
}


def split(rows, nbytes, num_bytes, files):
    return {"rows": rows, "bytes": nbytes, "num_bytes": num_bytes, "files": files}


MANIFEST = {
    "format": "persona-manifest/1", "name": "persona", "version": "v1.2.3", "demo": False,
    "fingerprint": "f" * 64, "recipe": "seed = 1234\n", "seed": 1234,
    "models": {
        "respond": {"id": "meta-llama/Llama-3.1-8B-Instruct", "revision": "0e9e39f", "dtype": "bfloat16",
                    "license": "llama3.1"},
        "critique": {"id": "Qwen/Qwen2.5-7B-Instruct", "revision": "a09a354", "dtype": "bfloat16"},
    },
    "versions": {"python": "3.11.7", "vllm": "0.32.0", "torch": "2.13.0", "datasets": "5.2.0",
                 "pyarrow": "26.0.1", "huggingface_hub": "2.4.0", "persona": "0.1.0"},
    "sources": {"census": {"source": "acs-pums-2024-1yr", "dictionary": "PUMS_Data_Dictionary_2023.csv",
                           "dictionary_sha256": "d" * 64, "files_sha256": "e" * 64,
                           "files": [{"file": f"p_{i:02d}.parquet", "rows": 1000 + i, "narrow": i == 6}
                                     for i in range(1, 52)]},
                "prompts": {"file": "prism_opening_prompts.json", "rows": 8011, "sha256": "c" * 64}},
    "counts": {
        "personas": 1523, "personas_drawn": 1600, "personas_rejected": 77,
        "prompts": {"filter": {"input": 8011, "no_question_mark": 3004, "too_short": 355, "too_long": 0,
                               "passed_rules": 4652, "duplicates_exact": 32, "duplicates_normalised": 14,
                               "after_dedup": 4606},
                    "classify": {"classify_limit": None, "classified": 4606, "classifier_rejects": 6,
                                 "controversial": 3868, "not_controversial": 732, "topics": {"Abortion": 3868}},
                    "split": {"train": 3000, "heldout": 868, "heldout_fraction": 0.2244}},
        "assignment": {"pairs": 317250, "personas": 1523},
        "pairs": {"train": 253600, "test_seen": 31800, "test_unseen": 31811},
        "requests": {"critic": {"requests": 317250, "ok": 317240, "rejects": {"invalid JSON": 10},
                                "prompt_tokens": 9000000, "output_tokens": 800000, "retries": 12,
                                "retry_output_tokens": 6144},
                     "reviser": {"requests": 317240, "ok": 317211, "rejects": {"identical": 29},
                                 "prompt_tokens": 9500000, "output_tokens": 900000, "retries": 3,
                                 "retry_output_tokens": 2304}},
    },
    # a persona breaking two rules counts under each: 80 rule breaks for 77 rejected personas
    "rejects": {"personas": {"householder_family_mismatch": 50, "birthplace_vs_citizenship": 20,
                             "judge_inconsistent": 10},
                "prompts": {}, "pairs": {"critique:invalid JSON": 10, "chosen:identical": 29}},
    "fidelity": [
        {"attribute": "sex", "category": "female", "population_share": 0.5071, "sample_share": 0.4987},
        {"attribute": "sex", "category": "male", "population_share": 0.4929, "sample_share": 0.5013},
        {"attribute": "age", "category": "18-29", "population_share": 0.2013, "sample_share": 0.2154},
        {"attribute": "age", "category": "30-64", "population_share": 0.5842, "sample_share": 0.5611},
        {"attribute": "age", "category": "65+", "population_share": 0.2145, "sample_share": 0.2235},
    ],
    "lengths": {"pairs": 317211, "length_control": None, "median_chosen_tokens": 23.0,
                "median_rejected_tokens": 160.0, "median_chosen_over_rejected": 0.1625,
                "share_chosen_shorter": 0.9375, "dpo_max_length": 1187, "dpo_longest": 1502,
                "dpo_length_basis": "tokenizer of meta-llama/Llama-3.1-8B-Instruct with its chat template"},
    "load_path": "persona",
    "diversity": {"chosen_per_prompt": {"prompts": 3868, "mean_distinct_share": 0.97, "min_distinct_share": 0.5},
                  "personas": 1523, "repeated_enriched": {"lifestyle": 0.25, "religion": 0.99}},
    "examples": {"preferences": {"pair_id": "ab12", "chosen": "Sure. " * 200, "chosen_tokens": 412},
                 "personas": {"persona_id": "p1", "imputed_fields": []}},
    "splits": {
        "preferences": {"train": split(253600, 412000000, 1300000000, ["preferences/train-00000-of-00001.parquet"]),
                        "test_seen": split(31800, 51000000, 160000000, ["preferences/test_seen-00000-of-00001.parquet"]),
                        "test_unseen": split(31811, 52000000, 161000000,
                                             ["preferences/test_unseen-00000-of-00001.parquet"])},
        "dpo": {"train": split(253600, 400000000, 1200000000, ["dpo/train-00000-of-00001.parquet"])},
        "personas": {"train": split(1523, 2100000, 3900000, ["personas/train-00000-of-00001.parquet"])},
        "prompts": {"train": split(3868, 310000, 620000, ["prompts/train-00000-of-00001.parquet"])},
    },
    "features": FEATURES,
    "files": [],
    "description": "Full-size build on open-weight models.",
    "census_fidelity": {"basis": {"sex": "all records observed"}, "population_records": 3422888,
                        "tvd_2way": [{"attributes": ["sex", "age"], "tvd": 0.03},
                                     {"attributes": ["age", "region"], "tvd": 0.05}]},
}


def table(text: str, heading: str) -> list[list[str]]:
    """Cells of the first Markdown table after `heading` (header and rule rows dropped)."""
    after = text[text.index(heading):]
    lines = [line for line in after.splitlines() if line.startswith("|")]
    start = after.splitlines().index(lines[0])
    rows = []
    for line in after.splitlines()[start:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows[2:]


def num(cell: str) -> float:
    return float(cell.replace(",", ""))


@pytest.fixture(scope="module")
def card_text():
    return render_card(MANIFEST, "fidelity.png")


def test_header_parses_with_hub_and_datasets(card_text):
    data = DatasetCard(card_text).data
    assert data.license == "cc-by-4.0" and data.language == ["en"]
    assert data.task_categories == ["text-generation"] and "synthetic" in data.tags
    assert data.size_categories == ["100K<n<1M"]  # largest config: 317,211 pairs
    assert data.pretty_name
    configs = MetadataConfigs.from_dataset_card_data(data)
    assert list(configs) == ["preferences", "dpo", "personas", "prompts"]
    assert configs["preferences"]["default"] is True
    assert [f["split"] for f in configs["preferences"]["data_files"]] == ["train", "test_seen", "test_unseen"]
    infos = DatasetInfosDict.from_dataset_card_data(data)
    for config, splits in MANIFEST["splits"].items():
        assert infos[config].features == Features._from_yaml_list(FEATURES[config])
        for name, info in splits.items():
            assert infos[config].splits[name].num_examples == info["rows"]
            assert infos[config].splits[name].num_bytes == info["num_bytes"]
        assert infos[config].download_size == sum(i["bytes"] for i in splits.values())


def test_numbers_match_manifest(card_text):
    m = MANIFEST
    assert m["fingerprint"] in card_text and f"seed {m['seed']}" in card_text
    contents = table(card_text, "## Contents")
    assert {(r[0], r[1]): (num(r[2]), num(r[3]), num(r[4])) for r in contents} == {
        (c, s): (i["rows"], i["bytes"], len(i["files"])) for c, ss in m["splits"].items() for s, i in ss.items()}
    models = table(card_text, "| role | model")
    assert {r[0]: (r[2].strip("`"), r[3]) for r in models} == {
        role: (spec["revision"], spec["dtype"]) for role, spec in m["models"].items()}
    assert "llama3.1" in models[[r[0] for r in models].index("respond")][4]
    tvd = attribute_tvd(m["fidelity"])
    fidelity = table(card_text, "## Census fidelity")
    assert len(fidelity) == len(m["fidelity"])
    for row, expected in zip(fidelity, m["fidelity"]):
        assert row[:2] == [expected["attribute"], expected["category"]]
        assert num(row[2]) == pytest.approx(expected["population_share"], abs=5e-5)
        assert num(row[3]) == pytest.approx(expected["sample_share"], abs=5e-5)
        assert num(row[4]) == pytest.approx(tvd[expected["attribute"]], abs=5e-5)
    assert tvd["sex"] == pytest.approx(0.0084)
    lengths = dict(table(card_text, "## Length confound"))
    assert lengths["length_control"] == "off"  # None is a setting, not a blank
    assert num(lengths["share_chosen_shorter"]) == 0.9375 and num(lengths["median_rejected_tokens"]) == 160
    assert 'revision="v1.2.3"' in card_text and "![" in card_text and "(fidelity.png)" in card_text
    for needle in ("Full-size build on open-weight models.", "- `sex`: all records observed", "2407.17387", "2404.16019", "Fr{\\\"a}nken", "public domain", "CC-BY-4.0"):
        assert needle in card_text


def test_demo_banner_iff_demo(card_text):
    assert "Demonstration build" not in card_text
    demo = copy.deepcopy(MANIFEST)
    demo["demo"] = True
    demo["models"] = {"respond": {"id": "HuggingFaceTB/SmolLM2-135M-Instruct", "revision": "r", "dtype": "bfloat16"}}
    text = render_card(demo, None)
    body = text.split("\n---\n", 1)[1]
    assert "Demonstration build" in body[:600]  # at the top, before any section
    assert "SmolLM2-135M" in body[:600]
    assert "demo" in DatasetCard(text).data.tags
    assert "![" not in text  # no plot given


def test_render_is_deterministic(card_text):
    assert render_card(copy.deepcopy(MANIFEST), "fidelity.png") == card_text


def test_plot_bytes_identical(tmp_path):
    a = plot_fidelity(MANIFEST["fidelity"], tmp_path / "a.png").read_bytes()
    b = plot_fidelity(MANIFEST["fidelity"], tmp_path / "b.png").read_bytes()
    assert a == b and a.startswith(b"\x89PNG")
    assert b"Software" not in a and b"Creation" not in a  # no version or time stamps


def test_card_does_not_import_builder():
    source = (Path(__file__).resolve().parents[1] / "dataset_card" / "card.py").read_text()
    assert not re.search(r"^\s*(from|import)\s+builder", source, re.M)


def funnel_rows(text: str, title: str) -> list[tuple[str, float]]:
    """(step, signed count) of one funnel table: "−12" is a drop, bold marks the result row."""
    return [(r[0].replace("&nbsp;", "").strip("* "), num(r[1].strip("*").replace("−", "-")))
            for r in table(text, f"\n**{title}**\n")]


def test_funnel_adds_up_and_equals_the_manifest(card_text):
    c, rejects = MANIFEST["counts"], MANIFEST["rejects"]
    people = funnel_rows(card_text, "Personas")
    assert people[0] == ("census records eligible", 3422888)
    assert people[1][1] == c["personas_drawn"] and people[2][1] == -c["personas_rejected"]
    assert people[1][1] + people[2][1] == people[-1][1] == c["personas"]
    rules = {step.split("`")[1]: n for step, n in people if step.startswith("breaking")}
    assert rules == rejects["personas"]
    assert "the rule rows sum to 80 for 77 rejected personas" in card_text  # overlap said, not hidden

    prompts = dict(funnel_rows(card_text, "Prompts"))
    f, k, sp = (c["prompts"][x] for x in ("filter", "classify", "split"))
    assert prompts["PRISM opening prompts"] == f["input"] == 8011
    drops = prompts["no question mark"] + prompts["too short (under 5 words)"] + prompts["too long"]
    assert f["input"] + drops == prompts["passed the rules"] == f["passed_rules"]
    dups = prompts["exact duplicates"] + prompts["duplicates after normalising"]
    assert f["passed_rules"] + dups == prompts["after dedup"] == f["after_dedup"]
    sampled = prompts["sent to the classifier"]
    assert sampled == k["classified"] == f["after_dedup"]  # no classify_limit: every prompt
    assert sampled + prompts["classifier answer unusable"] + prompts["not controversial"] \
        == prompts["controversial: kept"] == k["controversial"]
    assert prompts["train pool"] + prompts["held-out pool"] == k["controversial"] == sp["train"] + sp["heldout"]

    pairs = funnel_rows(card_text, "Pairs")
    assert pairs[0] == ("assigned (persona × prompt)", c["assignment"]["pairs"])
    dropped = [n for step, n in pairs if step.startswith("rejected at")]
    assert -sum(dropped) == sum(rejects["pairs"].values())
    made = dict(pairs)["pairs made"]
    assert pairs[0][1] + sum(dropped) == made == sum(c["pairs"].values())
    assert {step: n for step, n in pairs[-3:]} == c["pairs"]

    requests = {r[0]: [num(x) for x in r[1:]] for r in table(card_text, "| role | requests")}
    assert requests == {role: [r["requests"], r["ok"], sum(r["rejects"].values()), r["rejects"].get("truncated", 0),
                               r.get("truncated_kept", 0), r.get("retries", 0), r["retry_output_tokens"], r["prompt_tokens"],
                               r["output_tokens"]]
                        for role, r in c["requests"].items()}
    assert "| count | value" not in card_text  # the flattened dump is gone


def test_load_lines_work_from_the_build_folder_and_pin_the_hub(card_text):
    assert 'load_dataset("persona", "preferences")' in card_text  # load_path, not the recipe name
    assert 'load_dataset("<org>/persona", "preferences", revision="v1.2.3")' in card_text
    assert 'load_dataset("persona", "dpo")' in card_text and "DPOTrainer(" in card_text
    assert "max_length=1187" in card_text and "meta-llama/Llama-3.1-8B-Instruct with its chat template" in card_text
    renamed = render_card({**MANIFEST, "load_path": "out/persona-cpu", "version": None}, None)
    assert 'load_dataset("out/persona-cpu", "dpo")' in renamed and 'revision="v1.0.0"' in renamed


def test_sources_are_one_line_per_source_and_no_machine_path(card_text):
    sources = table(card_text, "| source | item")
    census = [r for r in sources if r[0] == "census"]
    files = [r for r in census if "Parquet files" in r[1]]
    assert len(files) == 1 and files[0][1].startswith("51 Parquet files")
    assert num(files[0][2]) == sum(f["rows"] for f in MANIFEST["sources"]["census"]["files"])
    assert "e" * 64 in files[0][3]
    assert ["prompts", "file: `prism_opening_prompts.json`", "8,011", f"`{'c' * 64}`"] in sources
    assert "[{" not in card_text and "'file'" not in card_text  # no Python list in a cell
    home, cwd = str(Path.home()), str(Path.cwd())
    body = card_text.split("\n---\n", 1)[1]
    assert home not in card_text and cwd not in card_text
    # no absolute path (outside URLs) anywhere in the prose
    assert not re.search(r"(?<![\w:/.<])/(home|root|tmp|work|Users|var|mnt)/", body)


def test_length_prose_follows_the_numbers(card_text):
    text = card_text[card_text.index("## Length confound"):]
    assert "chosen answer is shorter than the rejected one in 94% of pairs" in text
    assert "often longer" not in text and "Length control while revising: off" in text
    longer = render_card({**MANIFEST, "lengths": {**MANIFEST["lengths"], "share_chosen_shorter": 0.2,
                                                  "length_control": 0.15}}, None)
    assert "chosen answer is longer than the rejected one in 80% of pairs" in longer
    assert "Length control while revising: 0.15" in longer


def test_structure_lists_every_field_with_type_meaning_and_example(card_text):
    text = card_text[card_text.index("## Dataset structure"):card_text.index("## How it was built")]
    for config, features in FEATURES.items():
        section = text[text.index(f"### `{config}`"):]
        rows = {r[0].strip("`"): r for r in table(section, "| field | type")}
        assert list(rows)[:len(features)] == [f["name"] for f in features]
    prefs = {r[0].strip("`"): r for r in table(text, "### `preferences`")}
    assert prefs["chosen"][1] == "list of {role: string, content: string}" and prefs["chosen"][2]
    assert prefs["chosen_tokens"][3] == "412" and prefs["pair_id"][3] == "ab12"
    assert len(prefs["chosen"][3]) < 200 and prefs["chosen"][3].endswith("…")  # texts cut
    for split_name in ("`train`", "`test_seen`", "`test_unseen`"):
        assert f"- {split_name}: " in card_text  # what each split holds


def test_two_way_fidelity_and_diversity_tables(card_text):
    worst = table(card_text, "| attributes | joint TVD")
    assert worst == [["age × region", "0.0500"], ["sex × age", "0.0300"]]  # worst first
    repeated = dict(table(card_text, "| field | share repeated"))
    assert repeated == {"`lifestyle`": "0.2500", "`religion`": "0.9900"}
    assert "0.9700 on average and 0.5000 at the lowest" in card_text


# ------------------------------------------------------------------ data shape behind the card

def test_rejects_config_has_reason_lists_and_null_raw_and_loads(tmp_path):
    import datasets
    import pyarrow.parquet as pq

    from builder.pipeline import _reject_counts, _rejects_table, arrow_table
    from generation.results import StageResult
    persona_stage = StageResult(None, {"rejected": {"a_rule": 1, "b_rule": 1, "judge_inconsistent": 1}}, [
        {"id": "p1", "step": "consistency", "reasons": ["a_rule", "b_rule"], "raw": None},
        {"id": "p2", "step": "consistency", "reasons": ["judge_inconsistent"], "raw": "too young to vote"}])
    pair_stage = StageResult(None, {}, [{"id": "x1", "step": "critique", "reasons": ["invalid JSON: at 3, 4"],
                                         "raw": "{not json"}])
    table = _rejects_table({"personas": persona_stage, "prompts": StageResult(None, {}, []), "pairs": pair_stage})
    path = tmp_path / "rejects" / "train-00000-of-00001.parquet"
    path.parent.mkdir()
    pq.write_table(arrow_table(table), path)
    rows = datasets.load_dataset("parquet", data_files=str(path), split="train",
                                 cache_dir=str(tmp_path / "cache")).to_list()
    assert [r["reasons"] for r in rows] == [["invalid JSON: at 3, 4"], ["a_rule", "b_rule"], ["judge_inconsistent"]]
    assert [r["raw"] for r in rows] == ["{not json", None, "too young to vote"]  # null, never "None"/"null"
    assert "reason" not in rows[0]
    counts = _reject_counts(persona_stage, table)
    assert counts["pairs"] == {"critique:invalid JSON": 1} and counts["prompts"] == {}


def test_dpo_lengths_diversity_and_repeats():
    from generation.stats import chosen_diversity, dpo_lengths, repeated_share
    rows = [{"prompt": [{"role": "user", "content": "a b c d e f g h i j"}],   # 10 words
             "chosen": [{"role": "assistant", "content": " ".join(["w"] * n)}],
             "rejected": [{"role": "assistant", "content": "w"}]} for n in range(1, 1001)]
    out = dpo_lengths(rows)
    # p99 of 1,000 lengths, rounded up to a length a pair has: the 991st (10 + 991 words), so <= 1% is cut
    assert out["dpo_max_length"] == round(1.3 * 1001) and out["dpo_longest"] == round(1.3 * 1010)
    assert out["dpo_length_basis"].startswith("approximation: words x 1.3")
    assert chosen_diversity(["p", "p", "p", "q", "q", "r"], ["x", "x", "y", "z", "w", "v"]) == \
        {"prompts": 2, "mean_distinct_share": round((2 / 3 + 1) / 2, 4), "min_distinct_share": 0.6667}
    assert repeated_share(["farming", "farming", "chess", None]) == 0.6667 and repeated_share([None]) is None


def test_the_card_describes_every_config_a_build_writes():
    """dataset_card imports nothing of ours: its config list is checked against names.CONFIGS here."""
    from dataset_card.card import CONFIG_NOTES, DEFAULT_CONFIG
    from generation.names import CONFIGS, PREFERENCES
    assert tuple(CONFIG_NOTES) == CONFIGS and DEFAULT_CONFIG == PREFERENCES
