import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasets import Features, List, Value, load_dataset

from builder.manifest import (
    FORMAT,
    ManifestError,
    build_manifest,
    check_files,
    finalize,
    load_manifest,
    local_listing,
    package_versions,
    sha256_file,
    verify_folder,
    write_manifest,
    write_sha256sums,
)
from builder.shards import write_config
from dataset_card.card import render_card

MESSAGES = List({"role": Value("string"), "content": Value("string")})
PREFERENCES = Features({"pair_id": Value("string"), "persona_id": Value("string"), "question": Value("string"),
                        "chosen": MESSAGES, "rejected": MESSAGES, "chosen_tokens": Value("int32")})
PERSONAS = Features({"persona_id": Value("string"), "age": Value("int32"), "persona": Value("string")})
PROMPTS = Features({"prompt_id": Value("string"), "question": Value("string"), "split": Value("string")})

FIELDS = dict(
    name="persona",
    version="v0.1.0",
    recipe='seed = 7\n[models.respond]\nid = "HuggingFaceTB/SmolLM2-135M-Instruct"\n',
    seed=7,
    models={"respond": {"id": "HuggingFaceTB/SmolLM2-135M-Instruct", "revision": "abc123", "dtype": "bfloat16",
                        "license": "apache-2.0"}},
    versions={"python": "3.11.7", "vllm": None, "torch": None, "datasets": "x", "pyarrow": "y",
              "huggingface_hub": "z", "persona": "0.1.0"},
    sources={"census": {"name": "ACS PUMS 2024 1-year", "sha256": "ab" * 32}},
    counts={"personas": 4, "pairs": {"train": 40, "test_seen": 5, "test_unseen": 3}},
    rejects={"enrich": {"schema": 2}, "check": {"incoherent": 1}},
    fidelity=[{"attribute": "sex", "category": "female", "population_share": 0.51, "sample_share": 0.5},
              {"attribute": "sex", "category": "male", "population_share": 0.49, "sample_share": 0.5}],
    lengths={"median_chosen_over_rejected": 1.25, "chosen_longer_share": 0.7},
    demo=True,
)


def pairs(n, offset=0):
    return pa.Table.from_pylist([
        {"pair_id": f"x{i}", "persona_id": f"p{i % 4}", "question": f"why {i}?",
         "chosen": [{"role": "user", "content": f"why {i}?"}, {"role": "assistant", "content": "because " * i}],
         "rejected": [{"role": "user", "content": f"why {i}?"}, {"role": "assistant", "content": "no"}],
         "chosen_tokens": i} for i in range(offset, offset + n)])


def build(folder):
    """A complete small dataset folder: three configs, shards, card, plot, manifest, SHA256SUMS."""
    shards = []
    shards += write_config(folder, "preferences", "train", pairs(40), PREFERENCES, max_shard_bytes=3_000)
    shards += write_config(folder, "preferences", "test_seen", pairs(5, 40), PREFERENCES)
    shards += write_config(folder, "preferences", "test_unseen", pairs(3, 45), PREFERENCES)
    personas = pa.table({"persona_id": [f"p{i}" for i in range(4)], "age": [30, 41, 52, 63],
                         "persona": ["a", "b", "c", "d"]})
    shards += write_config(folder, "personas", "train", personas, PERSONAS)
    prompts = pa.table({"prompt_id": ["q1", "q2"], "question": ["why?", "how?"], "split": ["train", "test"]})
    shards += write_config(folder, "prompts", "train", prompts, PROMPTS)
    return finalize(folder, shards=shards, **FIELDS)


@pytest.fixture
def folder(tmp_path):
    build(tmp_path / "persona")
    return tmp_path / "persona"


def test_rebuild_is_byte_identical(tmp_path, folder):
    other = tmp_path / "again"
    build(other)
    assert (folder / "SHA256SUMS").read_bytes() == (other / "SHA256SUMS").read_bytes()
    assert (folder / "manifest.json").read_bytes() == (other / "manifest.json").read_bytes()


def test_manifest_contents(folder):
    text = (folder / "manifest.json").read_text()
    manifest = json.loads(text)
    assert text == json.dumps(manifest, sort_keys=True, indent=2, ensure_ascii=False) + "\n"
    assert manifest["format"] == FORMAT
    assert manifest["recipe"] == FIELDS["recipe"]
    assert len(manifest["fingerprint"]) == 64
    paths = [f["path"] for f in manifest["files"]]
    assert paths == sorted(paths)
    assert "README.md" in paths and "fidelity.png" in paths
    assert "manifest.json" not in paths and "SHA256SUMS" not in paths
    assert str(folder) not in text  # no absolute paths
    train = manifest["splits"]["preferences"]["train"]
    assert train["rows"] == 40 and len(train["files"]) > 1
    by_path = {f["path"]: f for f in manifest["files"]}
    assert sum(by_path[p]["rows"] for p in train["files"]) == 40
    assert by_path["README.md"]["rows"] is None
    restored = Features._from_yaml_list(manifest["features"]["preferences"])
    assert restored == PREFERENCES and restored.arrow_schema == PREFERENCES.arrow_schema  # order kept too
    assert render_card(manifest, "fidelity.png") == (folder / "README.md").read_text()  # card reproducible


def test_sha256sums_format(folder):
    lines = (folder / "SHA256SUMS").read_text().splitlines()
    paths = [line.split("  ", 1)[1] for line in lines]
    assert paths == sorted(paths) and "manifest.json" in paths and "SHA256SUMS" not in paths
    for line in lines:
        digest, rel = line.split("  ", 1)
        assert sha256_file(folder / rel) == digest
    write_sha256sums(folder)  # recomputing from scratch gives the same file
    assert (folder / "SHA256SUMS").read_text().splitlines() == lines


def test_verify_passes_on_fresh_folder(folder):
    assert verify_folder(folder) == []


def test_verify_names_flipped_byte(folder):
    rel = json.loads((folder / "manifest.json").read_text())["splits"]["preferences"]["train"]["files"][1]
    data = bytearray((folder / rel).read_bytes())
    data[len(data) // 2] ^= 0x01
    (folder / rel).write_bytes(bytes(data))
    problems = verify_folder(folder)
    assert problems and all(rel in p for p in problems)
    assert any(p.startswith("altered:") for p in problems)


def test_verify_names_deleted_and_extra_files(folder):
    (folder / "personas" / "train-00000-of-00001.parquet").unlink()
    (folder / "notes.txt").write_text("hello")
    problems = verify_folder(folder)
    assert any(p.startswith("missing:") and "personas/train-00000-of-00001.parquet" in p for p in problems)
    assert any(p.startswith("extra:") and "notes.txt" in p for p in problems)


def test_check_files_against_a_listing():
    manifest = {"files": [{"path": "a.parquet", "bytes": 3, "sha256": "aa", "rows": 1},
                          {"path": "b.parquet", "bytes": 4, "sha256": "bb", "rows": 1},
                          {"path": "c.parquet", "bytes": 5, "sha256": "cc", "rows": 1}]}
    listing = {"a.parquet": 3, "b.parquet": 9, "d.txt": 1, "manifest.json": 10}
    problems = check_files(manifest, listing, sha256_of=lambda p: "xx")
    assert problems == ["altered: a.parquet sha256 differs from manifest (aa...)",
                        "altered: b.parquet is 9 bytes, manifest says 4",
                        "missing: c.parquet (in manifest, 5 bytes)",
                        "extra: d.txt (1 bytes, not in manifest)"]
    assert check_files(manifest, {"a.parquet": 3, "b.parquet": 4, "c.parquet": 5},
                       sha256_of=lambda p: p[0] * 2) == []


def test_load_folder_with_card_configs(folder, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    ds = load_dataset(str(folder), "preferences", cache_dir=str(tmp_path / "cache"))
    assert {k: v.num_rows for k, v in ds.items()} == {"train": 40, "test_seen": 5, "test_unseen": 3}
    assert ds["train"].features == PREFERENCES
    assert ds["test_seen"][0]["pair_id"] == "x40"
    personas = load_dataset(str(folder), "personas", split="train", cache_dir=str(tmp_path / "cache"))
    assert personas.features == PERSONAS and personas["age"] == [30, 41, 52, 63]


def test_package_versions_keys():
    versions = package_versions()
    assert set(versions) == {"python", "vllm", "torch", "datasets", "pyarrow", "huggingface_hub", "persona"}
    assert versions["pyarrow"] == pa.__version__


# --- completeness: the counted splits and rows are all there ---------------------------------

def drop(folder, prefix, splits=True):
    """Remove every file under `prefix` and rewrite manifest `files` (and `splits` if asked) and
    SHA256SUMS to match, as a careless hand edit would: only `counts` still says what was built."""
    manifest = json.loads((folder / "manifest.json").read_text())
    for f in manifest["files"]:
        if f["path"].startswith(prefix):
            (folder / f["path"]).unlink()
    manifest["files"] = [f for f in manifest["files"] if not f["path"].startswith(prefix)]
    if splits:
        manifest["splits"].pop(prefix.rstrip("/"))
    write_manifest(folder, manifest)
    write_sha256sums(folder)
    return manifest


def test_verify_refuses_a_folder_without_its_counted_pairs(folder):
    drop(folder, "preferences/")
    assert verify_folder(folder) == [
        "incomplete: preferences/test_seen has 0 rows, manifest counts.pairs says 5",
        "incomplete: preferences/test_unseen has 0 rows, manifest counts.pairs says 3",
        "incomplete: preferences/train has 0 rows, manifest counts.pairs says 40"]


def test_verify_refuses_a_split_missing_its_files(folder):
    drop(folder, "personas/", splits=False)  # `splits` still lists the shard, `files` does not
    assert verify_folder(folder) == [
        "manifest: split personas/train names personas/train-00000-of-00001.parquet, absent from its files",
        "incomplete: personas/train has 0 rows in its shards, manifest splits says 4",
        "incomplete: personas/train has 0 rows, manifest counts.personas says 4"]


def test_verify_refuses_a_dropped_shard_and_wrong_row_counts(folder):
    manifest = json.loads((folder / "manifest.json").read_text())
    train = manifest["splits"]["preferences"]["train"]
    last = train["files"].pop()  # one of several train shards gone, the split's rows edited to match
    (folder / last).unlink()
    manifest["files"] = [f for f in manifest["files"] if f["path"] != last]
    left = sum(pq.read_metadata(folder / p).num_rows for p in train["files"])
    train["rows"] = left
    prompts = next(f for f in manifest["files"] if f["path"].startswith("prompts/"))
    prompts["rows"] = 3  # the shard's footer says 2
    write_manifest(folder, manifest)
    write_sha256sums(folder)
    n = len(train["files"])
    assert verify_folder(folder) == [
        "rows: prompts/train-00000-of-00001.parquet has 2 rows, its files entry says 3",
        f"incomplete: preferences/train lists {n} shard(s), their names say {n + 1}",
        f"incomplete: preferences/train has {left} rows, manifest counts.pairs says 40"]


# --- one checked reading of manifest.json -------------------------------------------------------

def edited(folder, edit):
    manifest = json.loads((folder / "manifest.json").read_text())
    edit(manifest)
    return json.dumps(manifest)


def set_file(i, key, value):
    return lambda m: m["files"][i].__setitem__(key, value)


@pytest.mark.parametrize("edit, message", [
    (set_file(3, "sha256", "x" * 64), "files[3].sha256: expected a 64-hex string, got \"xxxx"),
    (set_file(0, "bytes", "12"), 'files[0].bytes: expected a byte count, got "12"'),
    (set_file(0, "bytes", True), "files[0].bytes: expected a byte count, got true"),
    (set_file(2, "rows", None), "files[2].rows: expected a row count, got null"),  # a Parquet shard
    (lambda m: m["files"][1].pop("sha256"), "files[1].sha256: missing"),
    (lambda m: m.pop("splits"), "splits: missing"),
    (lambda m: m.update(format="other/1"), "format: expected 'persona-manifest/1', got \"other/1\""),
    (lambda m: m["counts"].update(pairs=48), "counts.pairs: expected an object {split: pairs}, got 48"),
    (lambda m: m["counts"]["pairs"].update(train=-1), "counts.pairs.train: expected a pair count, got -1"),
    (lambda m: m.update(files={}), "files: expected a list, got {}"),
    (set_file(0, "path", "../outside.txt"), "files[0].path: \"../outside.txt\" has a '.' or '..' part"),
    (set_file(0, "path", "a/./b"), "files[0].path: \"a/./b\" has a '.' or '..' part"),
    (set_file(0, "path", "/etc/passwd"), "files[0].path: \"/etc/passwd\" is absolute"),
    (set_file(0, "path", "C:x.txt"), "files[0].path: \"C:x.txt\" starts with a drive letter"),
    (set_file(0, "path", "a\\b.txt"), "files[0].path: \"a\\\\b.txt\" has a backslash"),
    (set_file(0, "path", "a//b.txt"), "files[0].path: \"a//b.txt\" has an empty part"),
    (set_file(0, "path", ""), 'files[0].path: "" is empty'),
    (set_file(0, "path", 7), "files[0].path: expected a relative POSIX path, got 7"),
    (set_file(1, "path", "README.md"), "files[1].path: \"README.md\" is listed twice"),
    (lambda m: m["splits"]["personas"]["train"]["files"].append("../../x/train-00000-of-00001.parquet"),
     "splits.personas.train.files[1]: \"../../x/train-00000-of-00001.parquet\" has a '.' or '..' part"),
    (lambda m: m["splits"]["personas"]["train"]["files"].append("prompts/train-00000-of-00001.parquet"),
     "splits.personas.train.files[1]: \"prompts/train-00000-of-00001.parquet\" is not a shard of this split"),
])
def test_load_manifest_names_the_file_and_key(folder, edit, message):
    with pytest.raises(ManifestError) as e:
        load_manifest(edited(folder, edit), "persona/manifest.json")
    assert str(e.value).startswith(f"persona/manifest.json: {message}")
    # verify reports the same single line, naming the file on disk
    (folder / "manifest.json").write_text(edited(folder, edit))
    assert verify_folder(folder) == [str(e.value).replace("persona/manifest.json", str(folder / "manifest.json"))]


@pytest.mark.parametrize("data, message", [
    (b'{"format": ', "not valid JSON (Expecting value: line 1 column 12"),
    (b'{"format": "persona-manifest/1", "format": 1}', "not valid JSON (duplicate key 'format')"),
    (b'{"fingerprint": NaN}', "not valid JSON (NaN is not JSON)"),
    (b'\xff{}', "not UTF-8 (byte 0)"),
    (b"[" * 200_000 + b"]" * 200_000, "nested too deeply to be a manifest"),
    (b"[]", "expected a JSON object"),
])
def test_load_manifest_refuses_unreadable_text(tmp_path, data, message):
    (tmp_path / "manifest.json").write_bytes(data)
    with pytest.raises(ManifestError) as e:
        load_manifest(tmp_path / "manifest.json")
    assert str(e.value).startswith(f"{tmp_path / 'manifest.json'}: {message}")


def test_load_manifest_echoes_little_of_a_huge_value(folder):
    with pytest.raises(ManifestError) as e:
        load_manifest(edited(folder, set_file(0, "sha256", "ab" * 500_000)), "m.json")
    assert str(e.value).startswith("m.json: files[0].sha256: expected a 64-hex string")
    assert len(str(e.value)) < 400


# --- symlinks: a build holds its own regular files only -----------------------------------------

def test_verify_refuses_symlinks_out_of_the_folder(folder, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shard = "prompts/train-00000-of-00001.parquet"
    (folder / shard).rename(outside / "shard.parquet")  # same bytes: the hashes still match
    (folder / shard).symlink_to(outside / "shard.parquet")
    (folder / "personas").rename(outside / "personas")  # a whole folder linked in
    (folder / "personas").symlink_to(outside / "personas")
    problems = verify_folder(folder)
    assert problems[:2] == ["symlink: personas (refused: a build holds regular files only)",
                            f"symlink: {shard} (refused: a build holds regular files only)"]
    assert f"missing: {shard} (in manifest, {(outside / 'shard.parquet').stat().st_size} bytes)" in problems
    with pytest.raises(ManifestError, match="symlink: personas"):
        local_listing(folder)


def test_verify_refuses_a_symlinked_manifest(folder, tmp_path):
    (folder / "manifest.json").rename(tmp_path / "manifest.json")
    (folder / "manifest.json").symlink_to(tmp_path / "manifest.json")
    assert verify_folder(folder) == ["symlink: manifest.json (refused: a build holds regular files only)"]


# --- no absolute local paths in what is published ------------------------------------------------

def only_shards(tmp_path):
    folder = tmp_path / "shards"
    write_config(folder, "personas", "train", pa.table({"persona_id": ["p0"], "age": [30], "persona": ["a"]}),
                 PERSONAS)
    return folder


@pytest.mark.parametrize("key, value, where", [
    ("sources", {"census": {"path": "/data/census/acs"}}, "sources.census.path"),
    ("sources", {"prompts": {"path": "~/prism.json"}}, "sources.prompts.path"),
    ("sources", {"census": {"files": [{"file": "C:\\data\\csv_pus.zip:psam_pusa.csv"}]}},
     "sources.census.files[0].file"),
    ("models", {"respond": {"path": "models/x", "note": "from HOME/models"}}, "models.respond.note"),
])
def test_build_manifest_refuses_local_paths(tmp_path, monkeypatch, key, value, where):
    monkeypatch.chdir(tmp_path)
    folder = only_shards(tmp_path)
    fields = dict(FIELDS)
    fields[key] = json.loads(json.dumps(value).replace("HOME", str(Path.home())).replace("CWD", str(tmp_path)))
    with pytest.raises(ManifestError) as e:
        build_manifest(folder, **fields)
    assert str(e.value).startswith(f"manifest.json: {where}: ")
    assert "is an absolute path of this machine" in str(e.value)


def test_the_recipe_text_is_kept_verbatim_even_with_paths(tmp_path, monkeypatch):
    """The user's own recipe is recorded as written (a rebuild needs it); the README asks for relative
    paths in recipes that are published."""
    monkeypatch.chdir(tmp_path)
    recipe = f'seed = 7\n[census]\nsource = "{tmp_path}/census"\n'
    assert build_manifest(only_shards(tmp_path), **dict(FIELDS, recipe=recipe))["recipe"] == recipe


def test_build_manifest_keeps_relative_paths_and_urls(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fields = dict(FIELDS, sources={
        "census": {"path": "../shared/data/census/acs-pums-2024-1yr", "files": [{"file": "p_10.parquet"}],
                   "persons": "https://www2.census.gov/programs-surveys/acs/data/pums/2024/1-Year/csv_pus.zip"},
        "prompts": {"repo": "hf://HannahRoseKirk/prism-alignment@main:conversations/opening_prompt"}})
    manifest = build_manifest(only_shards(tmp_path), **fields)
    assert manifest["sources"] == fields["sources"]
