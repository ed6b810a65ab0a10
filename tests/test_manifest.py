import json

import pyarrow as pa
import pytest
from datasets import Features, List, Value, load_dataset

from builder.manifest import (FORMAT, check_files, finalize, package_versions, sha256_file, verify_folder,
                              write_sha256sums)
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
    counts={"personas": 4, "pairs": 12},
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
