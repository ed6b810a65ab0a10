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
    "sources": {"census": {"name": "ACS PUMS 2024 1-year", "records": 3422888},
                "prism": {"name": "PRISM opening prompts", "prompts": 8011}},
    "counts": {"personas": 1523, "prompts": {"kept": 3868, "train": 3000}, "pairs": 317211},
    "rejects": {"enrich": {"schema": 17, "length": 3}, "check": {"incoherent": 41}},
    "fidelity": [
        {"attribute": "sex", "category": "female", "population_share": 0.5071, "sample_share": 0.4987},
        {"attribute": "sex", "category": "male", "population_share": 0.4929, "sample_share": 0.5013},
        {"attribute": "age", "category": "18-29", "population_share": 0.2013, "sample_share": 0.2154},
        {"attribute": "age", "category": "30-64", "population_share": 0.5842, "sample_share": 0.5611},
        {"attribute": "age", "category": "65+", "population_share": 0.2145, "sample_share": 0.2235},
    ],
    "lengths": {"median_chosen_over_rejected": 1.3712, "chosen_longer_share": 0.8123,
                "median_tokens": {"chosen": 412, "rejected": 301}},
    "splits": {
        "preferences": {"train": split(253600, 412000000, 1300000000, ["preferences/train-00000-of-00001.parquet"]),
                        "test_seen": split(31800, 51000000, 160000000, ["preferences/test_seen-00000-of-00001.parquet"]),
                        "test_unseen": split(31811, 52000000, 161000000,
                                             ["preferences/test_unseen-00000-of-00001.parquet"])},
        "personas": {"train": split(1523, 2100000, 3900000, ["personas/train-00000-of-00001.parquet"])},
        "prompts": {"train": split(3868, 310000, 620000, ["prompts/train-00000-of-00001.parquet"])},
    },
    "features": FEATURES,
    "files": [],
    "description": "Full-size build on open-weight models.",
    "census_fidelity": {"basis": {"sex": "all records observed"}},
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
    assert list(configs) == ["preferences", "personas", "prompts"]
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
    counts = {r[0]: num(r[1]) for r in table(card_text, "| count | value")}
    assert counts == {"personas": 1523, "prompts.kept": 3868, "prompts.train": 3000, "pairs": 317211}
    rejects = {(r[0], r[1]): num(r[2]) for r in table(card_text, "| stage | reason")}
    assert rejects == {(st, why): n for st, rs in m["rejects"].items() for why, n in rs.items()}
    tvd = attribute_tvd(m["fidelity"])
    fidelity = table(card_text, "## Census fidelity")
    assert len(fidelity) == len(m["fidelity"])
    for row, expected in zip(fidelity, m["fidelity"]):
        assert row[:2] == [expected["attribute"], expected["category"]]
        assert num(row[2]) == pytest.approx(expected["population_share"], abs=5e-5)
        assert num(row[3]) == pytest.approx(expected["sample_share"], abs=5e-5)
        assert num(row[4]) == pytest.approx(tvd[expected["attribute"]], abs=5e-5)
    assert tvd["sex"] == pytest.approx(0.0084)
    lengths = {r[0]: num(r[1]) for r in table(card_text, "## Length confound")}
    assert lengths == pytest.approx({"median_chosen_over_rejected": 1.3712, "chosen_longer_share": 0.8123,
                                     "median_tokens.chosen": 412, "median_tokens.rejected": 301}, rel=1e-3)
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
