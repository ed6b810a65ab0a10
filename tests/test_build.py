"""Whole builds with the real engine (tiny random-weight Llama): determinism, console, loading, verify, card.
Resume after kill -9 is tests/test_crash.py."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from .helpers import ROOT, build, edited, env, load_toml, run_py, write_recipe


@pytest.fixture(scope="module")
def built(tiny_build):
    return tiny_build


VLLM_LINE = re.compile(r"^(INFO|WARNING) \S+ \S+ \[vllm\.", re.M)  # a vLLM log line as generation/log.py writes it


def test_same_recipe_twice_gives_identical_bytes(shared_build, tmp_path):
    # the session's small build (tests/conftest.py) built again from nothing, in another process
    recipe = shared_build["recipe"]
    p = build(recipe, tmp_path / "persona", tmp_path / "work", "--verbose", check=True)
    a = (shared_build["out"] / "SHA256SUMS").read_text()
    assert a == (tmp_path / "persona" / "SHA256SUMS").read_text()
    assert "preferences/train-00000-of-00001.parquet" in a and "README.md" in a
    # --verbose shows vLLM's own lines on stderr, and changes nothing in the bytes
    assert VLLM_LINE.search(p.stderr) and "Resolved architecture" in p.stderr, p.stderr[-3000:]
    assert not (tmp_path / "work" / "test" / "vllm.log").exists()


def test_console_shows_only_persona_lines_and_vllm_goes_to_its_log(built):
    tmp, _ = built
    stdout, stderr = (tmp / "a" / "stdout.txt").read_text(), (tmp / "a" / "stderr.txt").read_text()
    assert stdout == ""
    # no vLLM line, Python or torch warning, or vLLM bar (the build's own bar per stage may show)
    chatter = re.compile(r"(INFO|WARNING|DEBUG) \d\d-\d\d |Warning|^\[?[WIE]\d{4} |Processed prompts|Rendering "
                         r"conversations|Adding requests|checkpoint shards")
    shown = [line for line in stderr.splitlines() if chatter.search(line) and not line.startswith("[persona] ")]
    assert not shown, "\n".join(shown[:20])
    assert len(stderr.splitlines()) <= 20, stderr  # one screen with `make dataset`'s own lines and a bar per stage
    vllm_log = tmp / "a" / "work" / "test" / "vllm.log"
    text = vllm_log.read_text()
    assert VLLM_LINE.search(text) and "Resolved architecture" in text
    # the summary: pairs, rejects, time, output, the log file, and a load_dataset line that works from here
    manifest = json.loads((tmp / "a" / "persona" / "manifest.json").read_text())
    pairs = sum(manifest["counts"]["pairs"].values())
    done = next(line for line in stderr.splitlines() if line.startswith("[persona] done in "))
    assert re.search(rf"done in \d+m\d\ds: {pairs:,} pairs, \d+ rejects .* in {re.escape(str(tmp / 'a' / 'persona'))}/ ", done), done
    assert f"[persona] vLLM's log: {vllm_log}" in stderr.splitlines()
    assert stderr.splitlines()[-1] == f'[persona] load it with: load_dataset("{tmp / "a" / "persona"}", "preferences")'


def test_load_dataset_by_name_from_the_parent_folder(built):
    tmp, _ = built
    manifest = json.loads((tmp / "a" / "persona" / "manifest.json").read_text())
    configs = sorted(manifest["splits"])  # every config the build wrote, `rejects` too when it has rows
    code = ("import json, datasets\n"
            "out = {c: {s: d.num_rows for s, d in datasets.load_dataset('persona', c).items()}"
            f" for c in {configs!r}}}\n"
            "print(json.dumps(out))\n")
    p = subprocess.run([sys.executable, "-c", code], cwd=tmp / "a", env=env(HF_DATASETS_CACHE=tmp / "hfcache"),
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    loaded = json.loads(p.stdout.strip().splitlines()[-1])
    for config in configs:
        want = {s: v["rows"] for s, v in manifest["splits"][config].items()}
        assert loaded[config] == want, config
    assert set(loaded["preferences"]) == {"train", "test_seen", "test_unseen"}
    assert sum(loaded["preferences"].values()) == sum(manifest["counts"]["pairs"].values()) > 0
    assert loaded["personas"]["train"] == manifest["counts"]["personas"]
    engine = manifest["models"]["responder"]["engine"]  # the effective vLLM settings of this (CPU) machine
    assert engine["device"] == "cpu" and engine["enable_chunked_prefill"] is False and engine["enforce_eager"] is True


def test_verify_cli_passes_then_names_the_altered_and_missing_file(built, tmp_path):
    import shutil
    tmp, _ = built
    folder = tmp_path / "copy"
    shutil.copytree(tmp / "a" / "persona", folder)
    ok = run_py(["-m", "builder.cli", "verify", folder])
    assert ok.returncode == 0 and "ok" in ok.stdout
    shard = folder / "preferences" / "train-00000-of-00001.parquet"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 1
    shard.write_bytes(bytes(data))
    bad = run_py(["-m", "builder.cli", "verify", folder])
    assert bad.returncode != 0 and "altered: preferences/train-00000-of-00001.parquet" in bad.stdout
    (folder / "personas" / "train-00000-of-00001.parquet").unlink()
    bad = run_py(["-m", "builder.cli", "verify", folder])
    assert "missing: personas/train-00000-of-00001.parquet" in bad.stdout


def test_card_validates_and_matches_manifest(built):
    from huggingface_hub import DatasetCard
    tmp, _ = built
    folder = tmp / "a" / "persona"
    manifest = json.loads((folder / "manifest.json").read_text())
    card = DatasetCard((folder / "README.md").read_text())
    data = card.data.to_dict()
    infos = {i["config_name"]: i for i in data["dataset_info"]}
    for split in infos["preferences"]["splits"]:
        assert split["num_examples"] == manifest["splits"]["preferences"][split["name"]]["rows"]
    assert "demonstration" in card.text.lower()
    # the load line names the output folder (absolute --out: its name), never a path of this machine
    assert 'load_dataset("persona", "preferences")' in card.text and manifest["load_path"] == "persona"
    assert isinstance(manifest["lengths"]["dpo_max_length"], int) and manifest["lengths"]["dpo_max_length"] > 0
    assert f"max_length={manifest['lengths']['dpo_max_length']})" in card.text
    # the recipe is kept verbatim (this test's recipe names absolute paths); nothing else may
    recorded = json.dumps({k: v for k, v in manifest.items() if k != "recipe"})
    for text in (folder.joinpath("README.md").read_text(), recorded):
        for local in {str(tmp), str(Path.home()), str(Path.cwd()), str(ROOT)}:
            assert local not in text
    prompts = {f["name"] for f in manifest["features"]["prompts"]}
    assert "pool" in prompts and "split" not in prompts
    if "rejects" in manifest["features"]:
        assert {"name": "reasons", "list": "string"} in manifest["features"]["rejects"]
    assert len(manifest["census_fidelity"]["tvd_2way"]) == 36


# kill -9 during pair generation then resume: tests/test_crash.py::test_kill_9_in_every_stage_then_resume_is_identical
# (kills once critic or reviser answers are stored, then resumes to the uninterrupted build's bytes, no answer twice)


def test_bad_recipe_is_one_clear_line(tmp_path):
    f = write_recipe(tmp_path / "r.toml", edited(load_toml(ROOT / "configs" / "cpu.toml"), {"census.bogus": 1}))
    p = build(f)
    assert p.returncode == 2
    assert p.stderr.strip() == f"persona: error: {f}: census: unknown key 'bogus' (allowed: dictionary, format, max_rounds, method, min_age, more, personas, sha256, share, source, states)"
