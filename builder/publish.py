"""Publish a built dataset folder to the Hugging Face Hub as one immutable, tagged version.

A version is a git tag `vMAJOR.MINOR.PATCH` on the dataset repo. `main` always holds the newest
published version; each tag keeps its own snapshot, so `load_dataset(repo, revision="v1.0.0")`
keeps returning the same rows after v1.1.0 is out. Tags are never moved, overwritten or deleted.

The Hub address comes from HF_ENDPOINT (read by huggingface_hub at import). The token is passed to
the client and nowhere else: it is never printed, logged, written, or put into an error message
(PublishError texts are built from our own words and the server's short error message, and any
token-like text in them is redacted). Reads of a public repo (verify, versions) never send it.

Every value used from a Hub answer is checked first (`hub_value`), and Hub text is escaped wherever it
is printed or put into an error. A publish holds the folder's output lock (the one a build takes) from
its verify to the tag, so no build can swap another folder in while it uploads.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, get_token
from huggingface_hub.errors import (
    FileMetadataError,
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.hf_api import RepoFile

from builder import folders
from builder.manifest import MANIFEST, ManifestError, check_files, check_rows, load_manifest, sha256_file, verify_folder
from builder.manifest_schema import HEX64, clip, path_problem
from generation.errors import PersonaError, printable, redact, secret
from generation.log import log
from generation.names import PREFERENCES as CONFIG

try:  # huggingface_hub 2.x speaks httpx2, 1.x httpx; both call network failures TransportError
    from httpx2 import TransportError
except ImportError:  # pragma: no cover - depends on the installed client
    from httpx import TransportError

SEMVER = re.compile(r"v(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)")  # ASCII digits only
# Written beside the data but not listed in the manifest (it cannot list itself or its checksums).
SIDECARS = ("manifest.json", "SHA256SUMS")
# Created and owned by the Hub in every repo: never deleted by a publish, never a data file.
HUB_MANAGED = (".gitattributes",)

# Transient failures worth retrying; anything else (401, 404, 409, 412, ...) will not heal by waiting.
RETRY_STATUS = (408, 429, 500, 502, 503, 504)
ATTEMPTS = 5  # total tries per Hub call; tests lower these two
BACKOFF_SECONDS = 2.0  # first wait; doubles each retry (2, 4, 8, 16 s)
# An anonymous read answered with these may be a private repo: only then is it retried with the token.
NOT_VISIBLE = (401, 403, 404)


class PublishError(PersonaError, RuntimeError):
    """A one-line, user-facing reason; the CLI prints it instead of a traceback. Tokens are redacted
    (generation.errors.redact: every token handed to a client here is a secret), control characters
    escaped. `status` is the HTTP status of the Hub answer that caused it, if any."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(printable(redact(message)))
        self.status = status


COMMIT = re.compile(r"[0-9a-f]{40}")
# The one schema of Hub answers: every value persona uses from one is checked by hub_value first (a
# reply without `sha` must not turn "verify v1.0.0" into a read of main).
HUB_VALUES = {
    "commit": ("a 40-hex commit id", lambda v: isinstance(v, str) and COMMIT.fullmatch(v)),
    "private": ("true or false", lambda v: isinstance(v, bool)),
    "ref name": ("a name", lambda v: isinstance(v, str) and 0 < len(v) <= 255),
    "path": ("a relative file path", lambda v: path_problem(v) is None),
    "size": ("a byte count", lambda v: type(v) is int and v >= 0),
    "sha256": ("a 64-hex sha256", lambda v: isinstance(v, str) and HEX64.fullmatch(v)),
}


def hub_value(what: str, kind: str, value):
    meaning, ok = HUB_VALUES[kind]
    if not ok(value):
        raise PublishError(f"{what} failed: the Hub answered {kind} {clip(repr(value))}, not {meaning}")
    return value


def resolve(api: HfApi, repo: str, revision: str) -> str:
    """The commit that `revision` (a tag, branch or commit) of dataset `repo` names."""
    what = f"resolving {repo}@{revision}"
    return hub_value(what, "commit", getattr(hub_call(what, api.dataset_info, repo, revision=revision), "sha", None))


def read_refs(api: HfApi, repo: str) -> tuple[dict[str, str], dict[str, str]]:
    """({branch: commit}, {tag: commit}) of dataset `repo`."""
    what = "reading the repo's refs"
    refs = hub_call(what, api.list_repo_refs, repo, repo_type="dataset")
    return tuple({hub_value(what, "ref name", r.name): hub_value(what, "commit", r.target_commit) for r in refs_}
                 for refs_ in (refs.branches, refs.tags))


def read_tree(api: HfApi, repo: str, revision: str, what: str = "listing files") -> dict[str, tuple[int, str | None]]:
    """{path: (bytes, sha256 of an LFS file, else None)} of every file of `repo` at `revision`."""
    entries = hub_call(what, lambda: [e for e in api.list_repo_tree(repo, recursive=True, revision=revision,
                                                                     repo_type="dataset") if isinstance(e, RepoFile)])
    return {hub_value(what, "path", e.path): (hub_value(what, "size", e.size),
                                              hub_value(what, "sha256", e.lfs.sha256) if e.lfs else None)
            for e in entries}


def _api(token) -> HfApi:
    """A client sending `token` (False: none, not even a saved login)."""
    if isinstance(token, str):
        secret(token)
    return HfApi(token=token, library_name="persona")


def anonymous_first(token: str | None, read):
    """`read(api)` without a token; only if the Hub says 401/403/404 (maybe a private repo), again
    with the token. A public repo is read without ever sending it."""
    try:
        return read(_api(False))
    except PublishError as e:
        token = token or get_token()
        if e.status not in NOT_VISIBLE or not token:
            raise
    return read(_api(token))


def load_line(repo: str, version: str) -> str:
    return f'load_dataset("{repo}", "{CONFIG}", revision="{version}")'


def publish(path, repo: str, version: str, private: bool = False, dry_run: bool = False,
            token: str | None = None) -> dict:
    """Upload the built folder at `path` to dataset repo `repo` as one commit tagged `version`."""
    if not SEMVER.fullmatch(version):  # cheap checks first: refuse before hashing gigabytes
        raise PublishError(f"version {version!r} is not a semantic version like v1.2.3")
    folder = Path(path)
    with ExitStack() as held:
        # the build's own lock, from the verify to the tag: a build cannot swap another folder in meanwhile
        out = Path(os.path.abspath(folder))
        if not out.name:
            raise PublishError(f"{folder} is not a built dataset folder")
        try:
            held.enter_context(folders.exclusive(folders.output_lock(out), f"output folder {folder}"))
        except OSError as e:
            raise PublishError(f"cannot lock {folder} for publishing ({e.strerror or type(e).__name__})") from None
        return _publish(folder, repo, version, private, dry_run, token)


def _publish(folder: Path, repo: str, version: str, private: bool, dry_run: bool, token: str | None) -> dict:
    problems = verify_folder(folder)  # also refuses symlinks, unsafe paths and missing rows
    if problems:
        raise PublishError(f"{folder} does not match its manifest: " + "; ".join(problems))
    manifest = load_manifest(folder / MANIFEST)
    if manifest.get("rehearsal"):
        raise PublishError(f"{folder} is a rehearsal build ({manifest['rehearsal']}); it is never published")
    paths = [f["path"] for f in manifest["files"]] + list(SIDECARS)
    sizes = {p: (folder / p).stat().st_size for p in paths}

    if dry_run:  # purely local: nothing is sent, not even a read
        for p in paths:
            print(f"  would upload {p} ({sizes[p]:,} bytes)")
        print(f"dry run: {len(paths)} files, {sum(sizes.values()):,} bytes -> {repo} as {version}; nothing sent")
        return {"dry_run": True, "repo": repo, "version": version, "load": load_line(repo, version),
                "files": [{"path": p, "bytes": sizes[p]} for p in paths]}

    token = token or get_token()  # argument, else HF_TOKEN, else the saved `hf auth login`
    if not token:
        raise PublishError("no Hugging Face token: set HF_TOKEN or run `hf auth login`")
    api = _api(token)
    hub_call("creating the repo", api.create_repo, repo, repo_type="dataset", private=private, exist_ok=True)
    # exist_ok keeps an existing repo as it is: publishing must not silently land with the other visibility
    # (an answer without a true/false visibility is refused by hub_value)
    what = "reading the repo's visibility"
    is_private = hub_value(what, "private", getattr(hub_call(what, api.dataset_info, repo), "private", None))
    if is_private != private:
        raise PublishError(
            f"{repo} exists and is public; refusing to publish with --private (nothing was uploaded): "
            "make the repo private on the Hub first, or publish without --private" if private else
            f"{repo} exists and is private; refusing to publish without --private (nothing was uploaded): "
            "pass --private to add a version to it, or make the repo public on the Hub first")
    branches, taken = read_refs(api, repo)
    if version in taken:
        raise PublishError(f"{repo} already has {version} (commit {taken[version][:12]}); "
                           "published versions are immutable, choose a new version")
    head = branches.get("main")

    # A new version replaces the previous one on main: remove remote files this build lacks.
    remote = read_tree(api, repo, head, "listing main") if head else {}
    stale = sorted(set(remote) - set(paths) - set(HUB_MANAGED))
    operations = [CommitOperationAdd(p, str(folder / p)) for p in paths]
    operations += [CommitOperationDelete(p) for p in stale]

    fingerprint = manifest["fingerprint"]
    log.info(f"uploading {len(paths)} files ({sum(sizes.values()):,} bytes), removing {len(stale)} to {repo}")
    # parent_commit makes the Hub refuse the commit if main moved meanwhile (a concurrent publish,
    # or an earlier attempt of ours that landed but whose answer was lost): no silent interleaving.
    commit = hub_call("the upload commit", api.create_commit, repo, operations, repo_type="dataset",
                  revision="main", parent_commit=head,
                  commit_message=f"Publish {version} (recipe {fingerprint[:12]})",
                  commit_description=f"version: {version}\nrecipe fingerprint: {fingerprint}\n")
    oid = hub_value("the upload commit", "commit", getattr(commit, "oid", None))
    try:
        hub_call("tagging", api.create_tag, repo, tag=version, revision=oid, repo_type="dataset",
             tag_message=f"{version} (recipe {fingerprint})", passthrough=(409,))
    except HfHubHTTPError:  # 409: a retried tag request may have landed the first time
        if read_refs(api, repo)[1].get(version) != oid:
            raise PublishError(f"{version} was created on {repo} by someone else meanwhile; "
                               f"commit {oid[:12]} is on main but untagged") from None

    # Check what the tag really serves, against the local manifest plus the two sidecars.
    expected = dict(manifest, files=manifest["files"] + [
        {"path": p, "bytes": sizes[p], "sha256": sha256_file(folder / p)} for p in SIDECARS
    ])
    problems = _remote_problems(api, repo, version, expected, with_sidecars=True)
    if problems:
        raise PublishError(f"{repo}@{version} (commit {oid[:12]}) does not match the build: "
                           + "; ".join(problems))
    line = load_line(repo, version)
    print(f"published {repo} {version} (commit {oid[:12]}); verified {len(paths)} files")
    print(line)
    return {"repo": repo, "version": version, "commit": oid, "files": paths, "deleted": stale, "load": line}


def verify_remote(repo: str, revision: str, token: str | None = None) -> list[str]:
    """Problems between `repo`@`revision` and the manifest.json stored there; [] = intact.
    Read anonymously; the token is sent only if the repo is not visible without it."""
    def read(api: HfApi) -> list[str]:
        # pin the revision to a commit so the manifest and the listing come from the same snapshot
        commit = resolve(api, repo, revision)
        with tempfile.TemporaryDirectory() as tmp:
            local = hub_call("downloading manifest.json", api.hf_hub_download, repo, MANIFEST,
                         repo_type="dataset", revision=commit, cache_dir=tmp)
            try:
                manifest = load_manifest(Path(local), where=f"{repo}@{commit[:12]}:{MANIFEST}")
            except ManifestError as e:
                return [str(e)]
        return _remote_problems(api, repo, commit, manifest, with_sidecars=False)

    return anonymous_first(token, read)


def list_versions(repo: str, token: str | None = None) -> list[tuple[str, str]]:
    """(tag, commit) of every semantic-version tag, oldest version first (read as verify_remote)."""
    tags = anonymous_first(token, lambda api: read_refs(api, repo)[1])
    # other tags (if someone adds them by hand) are not versions of this dataset
    versions = [(name, commit) for name, commit in tags.items() if SEMVER.fullmatch(name)]
    return sorted(versions, key=lambda v: tuple(int(x) for x in SEMVER.fullmatch(v[0]).groups()))


def _remote_problems(api: HfApi, repo: str, revision: str, manifest: dict, with_sidecars: bool) -> list[str]:
    entries = read_tree(api, repo, revision)
    skip = set(HUB_MANAGED) | (set() if with_sidecars else set(SIDECARS))
    listing = {p: size for p, (size, _) in entries.items() if p not in skip}

    def sha256_of(p: str) -> str:
        if entries[p][1]:  # the Hub stores the sha256 of LFS files: no need to download them
            return entries[p][1]
        with tempfile.TemporaryDirectory() as tmp:  # small regular file: fetch and hash it
            local = hub_call(f"downloading {p}", api.hf_hub_download, repo, p, repo_type="dataset",
                         revision=revision, cache_dir=tmp)
            return sha256_file(Path(local))

    intact: set[str] = set()
    problems = check_files(manifest, listing, sha256_of, intact)
    # the shards' rows as the manifest lists them: their sha256 matched, so they are the files it describes
    rows = {f["path"]: f.get("rows") for f in manifest["files"]}
    return problems + check_rows(manifest, lambda p: rows[p] if p in intact else None)


def hub_call(what: str, fn, *args, passthrough: tuple[int, ...] = (), **kwargs):
    """One Hub call: retried with exponential backoff on transient errors, else a PublishError.

    HTTP statuses in `passthrough` re-raise the client's error for the caller to handle.
    """
    for attempt in range(1, ATTEMPTS + 1):
        try:
            return fn(*args, **kwargs)
        except HfHubHTTPError as e:
            status = e.response.status_code if e.response is not None else None
            if status in passthrough:
                raise
            if status not in RETRY_STATUS or attempt == ATTEMPTS:
                raise PublishError(f"{what} failed{_after(attempt)}: {_reason(e, status)}", status) from None
        except HFValidationError as e:  # the client refused the arguments (a repo id like "a b")
            raise PublishError(f"{what} failed: {e}") from None
        except (LocalEntryNotFoundError, FileMetadataError) as e:  # a download answered without its headers
            raise PublishError(f"{what} failed: {clip(str(e).splitlines()[0] if str(e) else type(e).__name__)}") from e
        except (ValueError, TypeError, KeyError, AttributeError) as e:  # the client could not read the answer
            raise PublishError(f"{what} failed: the Hub's answer is malformed ({type(e).__name__}: "
                               f"{clip(str(e))})") from e  # (--debug shows where the client stumbled)
        except TransportError as e:
            if attempt == ATTEMPTS:
                raise PublishError(f"{what} failed{_after(attempt)}: cannot reach the Hub "
                                   f"({type(e).__name__})") from None
        delay = BACKOFF_SECONDS * 2 ** (attempt - 1)
        log.warning(f"{what}: transient error, retrying in {delay:g}s ({attempt}/{ATTEMPTS - 1})")
        time.sleep(delay)


def _after(attempt: int) -> str:
    return f" after {attempt} attempts" if attempt > 1 else ""


def _reason(e: HfHubHTTPError, status: int | None) -> str:
    if isinstance(e, RepositoryNotFoundError):
        return "repository not found (or not visible with this token)"
    if isinstance(e, RevisionNotFoundError):
        return "revision not found"
    if status == 412:
        return "main changed while publishing (concurrent publish?); nothing was tagged, re-run to retry"
    detail = (e.server_message or "").strip().splitlines()
    return f"HTTP {status}" + (f" {redact(detail[0])[:200]}" if detail else "")

