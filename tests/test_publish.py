"""builder.publish over real HTTP: the installed huggingface_hub and datasets clients talk to the
in-memory Hub of tests/hub_server.py (this machine has no internet).

The client side runs in a subprocess: both libraries read HF_ENDPOINT once, at import, and another
test module of the session may have imported them already. Run as a script, this file is that
client (see `_client_main`); a fresh process per step also hands us its complete stdout/stderr,
with every log record at DEBUG, to scan for the token.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from tests.hub_server import HubServer

ROOT = Path(__file__).resolve().parents[1]

TOKEN = "hf_PersonaTestToken_q7ZxW3vK9mB2nR8t"  # distinctive, to be searched for everywhere
REPO = "persona-test/persona"
README = """---
configs:
- config_name: preferences
  data_files:
  - split: train
    path: preferences/train-*.parquet
  - split: test_seen
    path: preferences/test_seen-*.parquet
  - split: test_unseen
    path: preferences/test_unseen-*.parquet
---
# persona (test build, seed {seed})
"""


# --- building small dataset folders ------------------------------------------------------

def rows_for(seed: int, split: str, n: int) -> list[dict]:
    return [{"persona_id": seed * 1000 + i, "prompt": f"{split} prompt {i} (seed {seed})",
             "chosen": f"answer a{seed}-{i}", "rejected": f"answer b{seed}-{i}"} for i in range(n)]


def png_1x1() -> bytes:
    def chunk(kind, data):
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")
    ihdr = (1).to_bytes(4, "big") * 2 + bytes([8, 2, 0, 0, 0])  # 1x1, 8-bit RGB
    idat = zlib.compress(b"\0\xff\x00\x00")  # filter byte + one red pixel
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def build(folder: Path, seed: int, train_shards: int = 1) -> dict[str, list[dict]]:
    """A built folder as the builder lays it out; returns the rows per split."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from builder import manifest as mf

    sizes = {"train": 6 + 4 * seed, "test_seen": 3, "test_unseen": 2 + seed}
    rows = {s: rows_for(seed, s, n) for s, n in sizes.items()}
    (folder / "preferences").mkdir(parents=True)
    for split, split_rows in rows.items():
        shards = train_shards if split == "train" else 1
        per = -(-len(split_rows) // shards)
        for k in range(shards):
            part = split_rows[k * per:(k + 1) * per]
            pq.write_table(pa.Table.from_pylist(part), folder / f"preferences/{split}-{k:05d}-of-{shards:05d}.parquet")
    (folder / "README.md").write_text(README.format(seed=seed))
    (folder / "fidelity.png").write_bytes(png_1x1())
    recipe = f"name = 'test'\nseed = {seed}\n"
    manifest = {"format": mf.FORMAT, "name": "persona", "version": None, "seed": seed,
                "fingerprint": hashlib.sha256(recipe.encode()).hexdigest(), "recipe": recipe,
                "splits": mf.splits_and_features(folder)[0], "counts": {"pairs": sizes},
                "files": mf.file_entries(folder)}
    mf.write_manifest(folder, manifest)
    mf.write_sha256sums(folder)
    assert mf.verify_folder(folder) == []
    return rows


def put_build(hub: HubServer, folder: Path, tag: str, repo: str = REPO) -> None:
    """The files of a built folder, committed to REPO on the test hub by hand (no client) and tagged."""
    hub.state.put(repo, {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()},
                  tag=tag)


# --- the client subprocess ---------------------------------------------------------------

def _client_main(steps: list) -> None:
    """Run [op, kwargs] steps with the real clients; print one `RESULT <json>` line per step."""
    import logging

    logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)  # every log record lands in stderr
    from huggingface_hub.utils import logging as hf_logging

    hf_logging.set_verbosity_debug()
    from builder import publish as pub

    pub.ATTEMPTS, pub.BACKOFF_SECONDS = 3, 0.05  # keep the retry test fast
    for op, kw in steps:
        try:
            if op == "publish":
                out = pub.publish(**kw)
            elif op == "verify":
                out = pub.verify_remote(**kw)
            elif op == "versions":
                out = pub.list_versions(**kw)
            elif op == "load":
                import datasets

                datasets.logging.set_verbosity_debug()
                ds = datasets.load_dataset(kw["repo"], "preferences", revision=kw["revision"], token=kw.get("token"))
                out = {split: ds[split].to_list() for split in ds}
            print("RESULT " + json.dumps({"ok": out}), flush=True)
        except pub.PublishError as e:
            print("RESULT " + json.dumps({"error": str(e)}), flush=True)


class Client:
    """Runs client steps in a subprocess pointed at the test hub; keeps every output for the scan."""

    def __init__(self, hub: HubServer, tmp: Path, env_token: bool = True):
        self.outputs: list[str] = []
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
        if env_token:
            self.env["HF_TOKEN"] = TOKEN
        self.env.update({
            "HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_XET": "1",
            "HF_HOME": str(tmp / "hf_home"), "HF_DATASETS_CACHE": str(tmp / "datasets_cache"),
            "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TQDM_DISABLE": "1",
            "HF_DEBUG": "1",  # the client logs every request as a curl command: must still hide the token
            "TMPDIR": str(tmp / "tmp"),  # the clients' temporary files land where the leak scan looks
            "PYTHONPATH": str(ROOT),
        })
        (tmp / "tmp").mkdir(exist_ok=True)

    def run(self, *steps) -> list[dict]:
        proc = subprocess.run([sys.executable, __file__, json.dumps(steps, default=str)], env=self.env,
                              cwd=ROOT, capture_output=True, text=True, timeout=120)
        self.outputs += [proc.stdout, proc.stderr]
        assert TOKEN not in proc.stdout + proc.stderr, "the token leaked into the client's output"
        assert proc.returncode == 0, proc.stderr[-4000:]
        results = [json.loads(line[len("RESULT "):]) for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        assert len(results) == len(steps), proc.stdout + proc.stderr[-4000:]
        return results

    def one(self, op: str, **kw):
        return self.run([op, kw])[0]


@pytest.fixture
def hub():
    server = HubServer(token=TOKEN).start()
    yield server
    server.stop()
    assert server.state.unknown == [], f"clients called endpoints the test hub lacks: {server.state.unknown}"


@pytest.fixture
def client(hub, tmp_path):
    return Client(hub, tmp_path)


def refs(hub):
    repo = hub.state.repos[REPO]
    return dict(repo.branches), dict(repo.tags), len(repo.commits)


# --- tests -------------------------------------------------------------------------------

def test_versions_keep_their_own_rows(hub, client, tmp_path):
    rows1 = build(tmp_path / "b1", seed=1)
    rows2 = build(tmp_path / "b2", seed=2, train_shards=2)  # other files: v1's train shard must go
    r1, r2 = client.run(["publish", {"path": tmp_path / "b1", "repo": REPO, "version": "v1.0.0"}],
                        ["publish", {"path": tmp_path / "b2", "repo": REPO, "version": "v1.1.0"}])
    assert r1["ok"]["load"] == 'load_dataset("persona-test/persona", "preferences", revision="v1.0.0")'
    assert r2["ok"]["deleted"] == ["preferences/train-00000-of-00001.parquet"]
    branches, tags, _ = refs(hub)
    assert tags == {"v1.0.0": r1["ok"]["commit"], "v1.1.0": r2["ok"]["commit"]}
    assert branches["main"] == tags["v1.1.0"]  # main is the newest version

    l1, l2, lmain = client.run(["load", {"repo": REPO, "revision": "v1.0.0"}],
                               ["load", {"repo": REPO, "revision": "v1.1.0"}],
                               ["load", {"repo": REPO, "revision": "main"}])
    assert l1["ok"] == rows1
    assert l2["ok"] == rows2
    assert lmain["ok"] == rows2


def test_published_versions_are_immutable(hub, client, tmp_path):
    build(tmp_path / "b1", seed=1)
    build(tmp_path / "b2", seed=2)
    first = client.one("publish", path=tmp_path / "b1", repo=REPO, version="v1.0.0")["ok"]
    before = refs(hub)
    again, *bad = client.run(
        ["publish", {"path": tmp_path / "b2", "repo": REPO, "version": "v1.0.0"}],
        *[["publish", {"path": tmp_path / "b2", "repo": REPO, "version": v}] for v in ("1.0", "v1.0", "vx.y.z")])
    assert "already has v1.0.0" in again["error"]
    assert refs(hub) == before  # no commit, the tag still points at the original commit
    assert refs(hub)[1]["v1.0.0"] == first["commit"]
    for result, v in zip(bad, ("1.0", "v1.0", "vx.y.z")):
        assert result["error"] == f"version {v!r} is not a semantic version like v1.2.3"


def test_commit_outage_leaves_nothing_then_succeeds(hub, client, tmp_path):
    build(tmp_path / "b1", seed=1)
    client.one("publish", path=tmp_path / "b1", repo=REPO, version="v1.0.0")
    build(tmp_path / "b2", seed=2)
    before = refs(hub)
    commits_asked = lambda: sum(1 for m, p, _ in hub.state.requests if m == "POST" and "/commit/" in p)  # noqa: E731
    asked = commits_asked()

    hub.state.fail_commits = True
    failed = client.one("publish", path=tmp_path / "b2", repo=REPO, version="v1.1.0")
    assert failed["error"].startswith("the upload commit failed after 3 attempts: HTTP 500")
    assert "\n" not in failed["error"]
    assert commits_asked() - asked == 3  # retried, bounded
    assert refs(hub) == before  # no new commit, no tag

    hub.state.fail_commits = False
    ok = client.one("publish", path=tmp_path / "b2", repo=REPO, version="v1.1.0")["ok"]
    assert refs(hub)[1]["v1.1.0"] == ok["commit"] == refs(hub)[0]["main"]


def test_verify_remote_names_the_altered_file(hub, client, tmp_path):
    build(tmp_path / "b1", seed=1)
    client.one("publish", path=tmp_path / "b1", repo=REPO, version="v1.0.0")
    assert client.one("verify", repo=REPO, revision="v1.0.0") == {"ok": []}

    hub.state.corrupt(REPO, "v1.0.0", "preferences/test_seen-00000-of-00001.parquet")  # LFS: sha256 listed
    hub.state.corrupt(REPO, "v1.0.0", "README.md")  # regular file: downloaded and hashed
    problems = client.one("verify", repo=REPO, revision="v1.0.0")["ok"]
    assert [p.split(" sha256 differs")[0] for p in problems] == [
        "altered: README.md", "altered: preferences/test_seen-00000-of-00001.parquet"]


def test_dry_run_and_local_refusals_send_nothing(hub, client, tmp_path):
    build(tmp_path / "b1", seed=1)
    build(tmp_path / "b2", seed=2)
    with open(tmp_path / "b2/preferences/train-00000-of-00001.parquet", "r+b") as f:
        f.write(b"XXXX")  # damaged after the build: the manifest no longer matches
    dry, damaged = client.run(
        ["publish", {"path": tmp_path / "b1", "repo": REPO, "version": "v1.0.0", "dry_run": True}],
        ["publish", {"path": tmp_path / "b2", "repo": REPO, "version": "v1.0.0"}])
    assert hub.state.requests == []
    files = {p.relative_to(tmp_path / "b1").as_posix(): p.stat().st_size
             for p in (tmp_path / "b1").rglob("*") if p.is_file()}
    assert {f["path"]: f["bytes"] for f in dry["ok"]["files"]} == files
    assert "b2 does not match its manifest: altered: preferences/train-00000-of-00001.parquet" in damaged["error"]


def test_list_versions_in_semver_order(hub, client, tmp_path):
    build(tmp_path / "b1", seed=1)
    oid = client.one("publish", path=tmp_path / "b1", repo=REPO, version="v1.0.0")["ok"]["commit"]
    # more tags on the same commit, in an order where text sorting would be wrong
    hub.state.repos[REPO].tags.update({"v1.10.0": oid, "v1.2.0": oid, "v0.9.3": oid, "nightly": oid})
    versions, missing = client.run(["versions", {"repo": REPO}], ["versions", {"repo": "persona-test/nope"}])
    assert missing["error"] == ("reading the repo's refs failed: "
                                "repository not found (or not visible with this token)")
    versions = versions["ok"]
    assert versions == [[v, oid] for v in ("v0.9.3", "v1.0.0", "v1.2.0", "v1.10.0")]


def test_token_never_leaks(hub, tmp_path):
    # the token given as an argument (not in the environment), to a private repo: reads need it too
    client = Client(hub, tmp_path, env_token=False)
    rows = build(tmp_path / "b1", seed=1)
    kw = {"path": tmp_path / "b1", "repo": REPO, "version": "v1.0.0", "private": True, "token": TOKEN}
    tokenless = {k: v for k, v in kw.items() if k != "token"}
    no_token, published, again, verified, loaded = client.run(
        ["publish", tokenless],  # no argument, no HF_TOKEN, no saved login
        ["publish", kw], ["publish", kw],  # the second one is an error path
        ["verify", {"repo": REPO, "revision": "v1.0.0", "token": TOKEN}],
        ["load", {"repo": REPO, "revision": "v1.0.0", "token": TOKEN}])
    assert no_token["error"].startswith("no Hugging Face token")
    assert hub.state.repos[REPO].private and "ok" in published and "error" in again
    assert verified == {"ok": []} and loaded["ok"] == rows
    assert hub.state.authorized_writes > 0  # the token really was sent
    joined = "".join(client.outputs)
    # HF_DEBUG made the client log every request as a curl command: the scan below is not vacuous
    assert "authorization: <TOKEN>" in joined
    assert TOKEN not in joined  # stdout/stderr, with every log record at DEBUG
    leaks = [p for p in tmp_path.rglob("*") if p.is_file() and TOKEN.encode() in p.read_bytes()]
    assert leaks == []
    assert any((tmp_path / "hf_home").rglob("*")) and any((tmp_path / "datasets_cache").rglob("*"))


def test_visibility_must_match_the_existing_repo(hub, client, tmp_path):
    build(tmp_path / "b1", seed=1)
    public = client.one("publish", path=tmp_path / "b1", repo=REPO, version="v1.0.0")["ok"]
    private_repo = "persona-test/private"
    client.one("publish", path=tmp_path / "b1", repo=private_repo, version="v1.0.0", private=True)
    before = {name: (dict(r.branches), dict(r.tags)) for name, r in hub.state.repos.items()}
    into_public, into_private = client.run(
        ["publish", {"path": tmp_path / "b1", "repo": REPO, "version": "v1.1.0", "private": True}],
        ["publish", {"path": tmp_path / "b1", "repo": private_repo, "version": "v1.1.0"}])
    assert into_public["error"] == (
        f"{REPO} exists and is public; refusing to publish with --private (nothing was uploaded): "
        "make the repo private on the Hub first, or publish without --private")
    assert into_private["error"] == (
        f"{private_repo} exists and is private; refusing to publish without --private (nothing was uploaded): "
        "pass --private to add a version to it, or make the repo public on the Hub first")
    assert {name: (dict(r.branches), dict(r.tags)) for name, r in hub.state.repos.items()} == before
    assert not hub.state.repos[REPO].private and hub.state.repos[REPO].tags == {"v1.0.0": public["commit"]}


def test_reads_of_a_public_repo_send_no_token(hub, client, tmp_path):
    build(tmp_path / "b1", seed=1)
    public, private = client.run(
        ["publish", {"path": tmp_path / "b1", "repo": REPO, "version": "v1.0.0"}],
        ["publish", {"path": tmp_path / "b1", "repo": "persona-test/private", "version": "v1.0.0", "private": True}])
    del hub.state.auth_sent[:]
    # HF_TOKEN is set in the client's environment and given as an argument: neither is sent
    assert client.run(["verify", {"repo": REPO, "revision": "v1.0.0", "token": TOKEN}],
                      ["versions", {"repo": REPO}]) == [{"ok": []}, {"ok": [["v1.0.0", public["ok"]["commit"]]]}]
    assert hub.state.auth_sent and not any(sent for _, _, sent in hub.state.auth_sent)

    del hub.state.auth_sent[:]  # a private repo: refused anonymously (404), then read with the token
    assert client.run(["verify", {"repo": "persona-test/private", "revision": "v1.0.0"}],
                      ["versions", {"repo": "persona-test/private"}]) == [
        {"ok": []}, {"ok": [["v1.0.0", private["ok"]["commit"]]]}]
    sent = [s for _, _, s in hub.state.auth_sent]
    assert sent[0] is False and sent[-1] is True


def test_tokens_echoed_by_the_server_are_redacted(hub, client, tmp_path):
    build(tmp_path / "b1", seed=1)
    hub.state.fail_commits = hub.state.echo_auth = True
    failed = client.one("publish", path=tmp_path / "b1", repo=REPO, version="v1.0.0")["error"]
    # Client.run already asserted TOKEN is nowhere in the client's output
    assert failed.startswith("the upload commit failed after 3 attempts: HTTP 500 Internal Error - injected")
    assert failed.endswith("(request had Authorization: Bearer ***)")


def test_redact_hides_the_given_token_and_token_shapes():
    from builder.publish import PublishError, _api
    from generation.errors import PersonaError, redact

    other = "hf_" + "a1B2c3D4e5" * 3  # shaped like a Hub token, never given to a client here
    assert str(PublishError(f"HTTP 401 bad token {other}.")) == "HTTP 401 bad token ***."
    assert str(PersonaError(f"server said {other}")) == "server said ***"  # one redaction, every error and log line
    assert redact("call hf_hub_download, hf_short") == "call hf_hub_download, hf_short"
    _api(TOKEN)  # a token handed to a client is redacted whole, whatever its shape
    assert str(PublishError(f"HTTP 401 bad token {TOKEN}")) == "HTTP 401 bad token ***"


def test_publish_refuses_symlinked_shards(hub, client, tmp_path):
    build(tmp_path / "b1", seed=1)
    shard = tmp_path / "b1/preferences/test_seen-00000-of-00001.parquet"
    shard.rename(tmp_path / "outside.parquet")  # same bytes: the manifest's hash still matches
    shard.symlink_to(tmp_path / "outside.parquet")
    dry, real = client.run(
        ["publish", {"path": tmp_path / "b1", "repo": REPO, "version": "v1.0.0", "dry_run": True}],
        ["publish", {"path": tmp_path / "b1", "repo": REPO, "version": "v1.0.0"}])
    for result in (dry, real):
        assert ("does not match its manifest: symlink: preferences/test_seen-00000-of-00001.parquet "
                "(refused: a build holds regular files only)") in result["error"]
    assert hub.state.requests == []


def test_verify_remote_refuses_a_published_folder_missing_its_pairs(hub, client, tmp_path):
    from builder import manifest as mf
    from tests.hub_server import Blob

    build(tmp_path / "b1", seed=1)
    client.one("publish", path=tmp_path / "b1", repo=REPO, version="v1.0.0")
    # v1.1.0 lacks its test_seen split, with files and splits edited to match: only counts remember it
    folder = tmp_path / "b1"
    (folder / "preferences/test_seen-00000-of-00001.parquet").unlink()
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"] = mf.file_entries(folder)
    manifest["splits"] = mf.splits_and_features(folder)[0]
    mf.write_manifest(folder, manifest)
    mf.write_sha256sums(folder)
    missing = "incomplete: preferences/test_seen has 0 rows, manifest counts.pairs says 3"
    assert mf.verify_folder(folder) == [missing]
    # published anyway by hand (the Hub client, not persona): verify of the tag names it
    repo = hub.state.repos[REPO]
    files = dict(repo.commits[repo.branches["main"]].files)
    del files["preferences/test_seen-00000-of-00001.parquet"]
    files["manifest.json"] = Blob((folder / "manifest.json").read_bytes(), False)
    commit = hub.state.new_commit(repo, repo.branches["main"], "by hand", files)
    repo.branches["main"] = repo.tags["v1.1.0"] = commit.oid
    assert client.one("verify", repo=REPO, revision="v1.1.0") == {"ok": [missing]}


def test_hostile_hub_answers_are_one_line_errors(hub, client, tmp_path):
    """Each Hub answer is checked before use: bad JSON, a missing or malformed field is one PublishError
    (the client subprocess prints it; any other exception fails Client.run). Verify never reads main
    instead of the tag it was asked for."""
    build(tmp_path / "b1", seed=1)
    build(tmp_path / "b2", seed=2)
    put_build(hub, tmp_path / "b1", "v1.0.0")
    put_build(hub, tmp_path / "b2", "v1.1.0")  # main = v1.1.0, intact
    hub.state.corrupt(REPO, "v1.0.0", "README.md")
    verify = ["verify", {"repo": REPO, "revision": "v1.0.0"}]
    versions = ["versions", {"repo": REPO}]
    publish = ["publish", {"path": tmp_path / "b1", "repo": REPO, "version": "v2.0.0"}]
    before = refs(hub)

    def answers(broken: dict, *steps):  # (one client process per call: they are slow to start)
        hub.state.broken = broken
        try:
            return [r.get("error", r) for r in client.run(*steps)]
        finally:
            hub.state.broken = {}

    no_sha = {"info": lambda info: {k: v for k, v in info.items() if k != "sha"}}
    assert answers(no_sha, verify) == [f"resolving {REPO}@v1.0.0 failed: the Hub answered commit None, "
                                       "not a 40-hex commit id"]
    assert answers({"info": b"<html>busy</html>"}, verify, publish) == [
        f"resolving {REPO}@v1.0.0 failed: the Hub's answer is malformed (JSONDecodeError: Expecting value: "
        "line 1 column 1 (char 0))",
        "reading the repo's visibility failed: the Hub's answer is malformed (JSONDecodeError: Expecting value: "
        "line 1 column 1 (char 0))"]
    # (verify reads no visibility, publish stops before listing files)
    wrong_types = {"info": lambda info: {**info, "private": "no"}, "tree": lambda tree: [{**e, "size": "big"} for e in tree]}
    assert answers(wrong_types, verify, publish) == [
        "listing files failed: the Hub answered size 'big', not a byte count",
        "reading the repo's visibility failed: the Hub answered private 'no', not true or false"]
    # (verify reads no refs, versions and publish download nothing before)
    no_commit_header = lambda headers: {k: v for k, v in headers.items() if k != "X-Repo-Commit"}  # noqa: E731
    wrong_commit = lambda refs: {**refs, "tags": [{**t, "targetCommit": "main"} for t in refs["tags"]]}  # noqa: E731
    bad_refs = "reading the repo's refs failed: the Hub answered commit 'main', not a 40-hex commit id"
    in_versions, in_publish, download = answers({"refs": wrong_commit, "resolve": no_commit_header},
                                                versions, publish, verify)
    assert in_versions == in_publish == bad_refs
    assert download.startswith("downloading manifest.json failed: Response from ") and "X-Repo-Commit" in download
    assert refs(hub) == before  # nothing committed, nothing tagged

    intact, landed = answers({"commit": lambda c: {**c, "commitOid": None}}, verify, publish)
    assert intact["ok"][0].startswith("altered: README.md sha256 differs")  # what verify must not miss
    assert landed == "the upload commit failed: the Hub answered commit None, not a 40-hex commit id"
    assert refs(hub)[1] == before[1]  # (the Hub may have taken the commit; nothing tags an unknown one)

if __name__ == "__main__":
    _client_main(json.loads(sys.argv[1]))
