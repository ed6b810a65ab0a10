"""A small in-memory Hugging Face Hub for tests (this machine has no internet).

It answers the requests that the installed huggingface_hub and datasets clients really make
when creating a dataset repo, committing (regular + LFS "basic" transfer), tagging, listing and
downloading. Commits are immutable snapshots {path: Blob} with a parent; branches and tags point
at commit oids. All file metadata (sizes, sha256, git oids, ETags) is derived from the stored
bytes on every request, so `corrupt()` changes what the server reports, as real storage damage
would be seen by a checksum check.

Anything the server does not implement is answered 501 and recorded in `unknown` (and printed to
stderr) so a gap in the emulation shows up as a visible failure, not as a silent wrong answer.
Request headers are never logged: they carry the Authorization token.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import sys
import threading
import traceback
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

# Files the server stores through LFS, like the Hub's default .gitattributes does.
LFS_SUFFIXES = (".parquet", ".arrow", ".png", ".jpg", ".bin", ".safetensors", ".zip", ".gz")
LFS_MIN_SIZE = 10 * 1024 * 1024
GITATTRIBUTES = b"*.parquet filter=lfs diff=lfs merge=lfs -text\n*.png filter=lfs diff=lfs merge=lfs -text\n"


def git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Blob:
    data: bytes
    lfs: bool

    def entry(self, path: str) -> dict:
        """Tree entry in the Hub's JSON shape (LFS files carry their sha256 as lfs.oid)."""
        out = {"type": "file", "path": path, "size": len(self.data)}
        if self.lfs:
            sha = hashlib.sha256(self.data).hexdigest()
            pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha}\nsize {len(self.data)}\n"
            out["oid"] = git_blob_oid(pointer.encode())
            out["lfs"] = {"oid": sha, "size": len(self.data), "pointerSize": len(pointer)}
        else:
            out["oid"] = git_blob_oid(self.data)
        return out

    @property
    def etag(self) -> str:
        return hashlib.sha256(self.data).hexdigest() if self.lfs else git_blob_oid(self.data)


@dataclass
class Commit:
    oid: str
    parent: str | None
    title: str
    files: dict[str, Blob]
    date: str = field(default_factory=lambda: datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z"))


@dataclass
class Repo:
    repo_id: str
    private: bool
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    def resolve(self, rev: str) -> Commit | None:
        """Branch, tag, full commit oid or a >=7-char prefix of one."""
        oid = self.branches.get(rev) or self.tags.get(rev)
        if oid is None and rev in self.commits:
            oid = rev
        if oid is None and len(rev) >= 7:
            matches = [c for c in self.commits if c.startswith(rev)]
            oid = matches[0] if len(matches) == 1 else None
        return self.commits.get(oid) if oid else None


class HubState:
    """Everything the server knows; tests read and poke it directly."""

    def __init__(self, token: str | None):
        self.token = token  # when set, writes must carry "Authorization: Bearer <token>"
        self.repos: dict[str, Repo] = {}
        self.lfs_store: dict[str, bytes] = {}  # sha256 -> bytes uploaded via the LFS PUT href
        self.fail_commits = False  # fault injection: every commit request answers HTTP 500
        self.echo_auth = False  # fault injection: error messages quote the Authorization header they got
        # hostile answers: endpoint name (info, refs, tree, commit, ...) -> the bytes to send instead of its
        # JSON, or a function of the JSON object it would send returning the object to send (for resolve,
        # the file download: a function of its headers)
        self.broken: dict[str, object] = {}
        # endpoint name -> an Event its requests wait for (set by the test); `arrived` names those that came
        self.gate: dict[str, threading.Event] = {}
        self.arrived: list[str] = []
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status) of every answered request
        # (method, path, whether an Authorization header came) of every answered request; never its value
        self.auth_sent: list[tuple[str, str, bool]] = []
        self.unknown: list[tuple[str, str]] = []
        self.authorized_writes = 0  # proves the client really sent the token
        self.lock = threading.RLock()
        self._counter = itertools.count()

    def new_commit(self, repo: Repo, parent: str | None, title: str, files: dict[str, Blob]) -> Commit:
        seed = json.dumps([parent, title, sorted((p, b.etag) for p, b in files.items()), next(self._counter)])
        commit = Commit(hashlib.sha1(seed.encode()).hexdigest(), parent, title, files)
        repo.commits[commit.oid] = commit
        return commit

    def put(self, repo_id: str, files: dict[str, bytes], tag: str | None = None) -> Commit:
        """Commit FILES onto main of REPO_ID (a public repo, made if new) by hand, as anyone with write
        access could, without persona's checks; tag it TAG."""
        with self.lock:
            repo = self.repos.setdefault(repo_id, Repo(repo_id, private=False))
            head = repo.branches.get("main")
            old = repo.commits[head].files if head else {".gitattributes": Blob(GITATTRIBUTES, False)}
            new = {p: Blob(data, p.endswith(LFS_SUFFIXES)) for p, data in files.items()}
            commit = self.new_commit(repo, head, "by hand", {**old, **new})
            repo.branches["main"] = commit.oid
            if tag:
                repo.tags[tag] = commit.oid
            return commit

    def corrupt(self, repo_id: str, revision: str, path: str) -> None:
        """Flip one byte of a stored file in place (same size): simulated storage corruption."""
        with self.lock:
            commit = self.repos[repo_id].resolve(revision)
            blob = commit.files[path]
            data = bytearray(blob.data)
            data[len(data) // 2] ^= 0xFF
            commit.files[path] = Blob(bytes(data), blob.lfs)


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, **extra):
        super().__init__(message)
        self.status, self.message, self.code, self.extra = status, message, code, extra


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as httpx expects; every response sets Content-Length
    state: HubState  # set on the subclass made by HubServer

    # --- plumbing -------------------------------------------------------------------------
    def log_message(self, format, *args):  # noqa: A002 - quiet; requests are kept in state.requests
        pass

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, content_type="application/json"):
        with self.state.lock:
            self.state.requests.append((self.command, urlsplit(self.path).path, status))
            self.state.auth_sent.append((self.command, urlsplit(self.path).path, "Authorization" in self.headers))
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, obj, status: int = 200, headers: dict | None = None):
        broken = self.state.broken.get(getattr(self, "endpoint", None)) if status < 400 else None
        if callable(broken):
            obj = broken(obj)
        self._send(status, broken if isinstance(broken, bytes) else json.dumps(obj).encode(), headers)

    def _authorized(self) -> bool:
        if self.state.token is None:
            return True
        return self.headers.get("Authorization") == f"Bearer {self.state.token}"

    def _require_write(self):
        if not self._authorized():
            raise HubError(401, "Invalid credentials in Authorization header")
        self.state.authorized_writes += 1

    def _repo(self, ns: str, name: str) -> Repo:
        repo = self.state.repos.get(f"{ns}/{name}")
        if repo is None or (repo.private and not self._authorized()):
            raise HubError(404, "Repository not found", "RepoNotFound")
        return repo

    def _commit(self, repo: Repo, rev: str) -> Commit:
        commit = repo.resolve(rev)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        return commit

    def _dispatch(self):
        url = urlsplit(self.path)
        # split on raw "/" before unquoting: revisions and tree paths arrive as one %2F-quoted segment
        seg = [unquote(s) for s in url.path.split("/")[1:]]
        query = parse_qs(url.query)
        self.endpoint = None  # (a keep-alive connection reuses this handler)
        try:
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                # the clients send Content-Length; refuse a chunked body loudly rather than misread it
                self.close_connection = True
                handler = None
            else:
                # read the whole body first: an error answered before reading it would desync keep-alive
                self.body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                handler = self._route(seg)
            if handler is None:
                with self.state.lock:
                    self.state.unknown.append((self.command, url.path))
                print(f"HUB SERVER: UNHANDLED {self.command} {url.path}", file=sys.stderr, flush=True)
                raise HubError(501, f"test hub does not implement {self.command} {url.path}")
            self.endpoint = handler.__name__
            if handler.__name__ in self.state.gate:  # outside the lock: other requests go on meanwhile
                with self.state.lock:
                    self.state.arrived.append(handler.__name__)
                self.state.gate[handler.__name__].wait(timeout=120)
            with self.state.lock:
                handler(seg, query)
        except HubError as e:
            headers = {"X-Error-Message": e.message}
            if e.code:
                headers["X-Error-Code"] = e.code
            if self.state.echo_auth:  # as a careless server might, in its answer's body (never in a log)
                e.message += f" (request had Authorization: {self.headers.get('Authorization')})"
                del headers["X-Error-Message"]  # the clients log headers at DEBUG, which we cannot redact
            self._json({"error": e.message, **e.extra}, e.status, headers)
        except Exception:  # a bug in this server: make it loud, and still answer
            traceback.print_exc()
            with self.state.lock:
                self.state.unknown.append((self.command, url.path))
            self._json({"error": "test hub crashed"}, 500)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _dispatch

    def _route(self, seg: list[str]):
        m = self.command
        if m == "POST" and seg == ["api", "repos", "create"]:
            return self.create_repo
        if m == "POST" and seg == ["api", "validate-yaml"]:
            return self.validate_yaml
        if m == "GET" and seg == ["api", "agent-harnesses"]:
            return self.agent_harnesses
        if m == "PUT" and len(seg) == 2 and seg[0] == "lfs-upload":
            return self.lfs_put
        if m == "POST" and len(seg) == 7 and seg[0] == "datasets" and seg[2].endswith(".git") and seg[3:] == [
            "info", "lfs", "objects", "batch",
        ]:
            return self.lfs_batch
        if m in ("GET", "HEAD") and len(seg) >= 6 and seg[0] == "datasets" and seg[3] == "resolve":
            return self.resolve
        if len(seg) < 4 or seg[:2] != ["api", "datasets"]:
            return None
        action = seg[4] if len(seg) > 4 else None
        table = {
            ("GET", None): self.info,
            ("GET", "revision"): self.info,
            ("GET", "refs"): self.refs,
            ("GET", "tree"): self.tree,
            ("POST", "preupload"): self.preupload,
            ("POST", "commit"): self.commit,
            ("POST", "tag"): self.tag,
        }
        return table.get((m, action))

    # --- endpoints ------------------------------------------------------------------------
    def create_repo(self, seg, query):
        self._require_write()
        payload = json.loads(self.body)
        if payload.get("type") != "dataset":
            raise HubError(400, "test hub only hosts dataset repos")
        repo_id = f"{payload['organization']}/{payload['name']}"
        base = f"http://{self.headers['Host']}"
        if repo_id in self.state.repos:
            # the client reads "url" even from this 409 when called with exist_ok=True
            raise HubError(409, "You already created this dataset repo", url=f"{base}/datasets/{repo_id}")
        repo = Repo(repo_id, private=payload.get("visibility") == "private" or bool(payload.get("private")))
        # like the Hub: a new repo starts with a system commit holding .gitattributes
        first = self.state.new_commit(repo, None, "initial commit", {".gitattributes": Blob(GITATTRIBUTES, False)})
        repo.branches["main"] = first.oid
        self.state.repos[repo_id] = repo
        self._json({"url": f"{base}/datasets/{repo_id}", "name": repo_id})

    def validate_yaml(self, seg, query):
        self._json({"errors": [], "warnings": []})

    def agent_harnesses(self, seg, query):
        # registry huggingface_hub fetches (unless telemetry is off) to name AI agents in its user-agent
        self._json({"standardEnvVars": [], "harnesses": {}})

    def info(self, seg, query):
        repo = self._repo(seg[2], seg[3])
        commit = self._commit(repo, seg[5] if len(seg) > 5 else "main")
        siblings = [{"rfilename": path} for path in sorted(commit.files)]
        self._json({
            "id": repo.repo_id, "author": repo.repo_id.split("/")[0], "sha": commit.oid, "private": repo.private,
            "disabled": False, "gated": False, "downloads": 0, "likes": 0, "tags": [], "siblings": siblings,
            "lastModified": commit.date, "createdAt": commit.date,
        })

    def refs(self, seg, query):
        repo = self._repo(seg[2], seg[3])

        def refs_of(kind, table):
            return [{"name": n, "ref": f"refs/{kind}/{n}", "targetCommit": oid} for n, oid in sorted(table.items())]

        self._json({"branches": refs_of("heads", repo.branches), "tags": refs_of("tags", repo.tags),
                    "converts": [], "pullRequests": []})

    def _entries(self, commit: Commit) -> dict[str, dict]:
        """All files and (implicit) folders of a snapshot, keyed by path."""
        out: dict[str, dict] = {}
        for path, blob in commit.files.items():
            out[path] = blob.entry(path)
            parts = path.split("/")
            for i in range(1, len(parts)):
                folder = "/".join(parts[:i])
                out.setdefault(folder, {"type": "directory", "path": folder, "size": 0,
                                        "oid": hashlib.sha1(f"{commit.oid}:{folder}".encode()).hexdigest()})
        return out

    def tree(self, seg, query):
        repo = self._repo(seg[2], seg[3])
        commit = self._commit(repo, seg[5])
        base = "/".join(seg[6:]).strip("/")
        recursive = query.get("recursive", ["false"])[0].lower() == "true"
        entries = self._entries(commit)
        if base and entries.get(base, {}).get("type") != "directory":
            raise HubError(404, f"{base} does not exist", "EntryNotFound")
        prefix = base + "/" if base else ""
        listed = [e for p, e in sorted(entries.items())
                  if p.startswith(prefix) and (recursive or "/" not in p[len(prefix):])]
        self._json(listed)

    def preupload(self, seg, query):
        self._require_write()
        repo = self._repo(seg[2], seg[3])
        commit = self._commit(repo, seg[5])
        files = []
        for f in json.loads(self.body)["files"]:
            sample = base64.b64decode(f["sample"])
            lfs = f["path"].endswith(LFS_SUFFIXES) or f["size"] >= LFS_MIN_SIZE or b"\0" in sample
            current = commit.files.get(f["path"])
            # oid lets the client skip unchanged files: sha256 for LFS, git blob sha1 for regular
            oid = None
            if current is not None and current.lfs == lfs:
                oid = hashlib.sha256(current.data).hexdigest() if lfs else git_blob_oid(current.data)
            files.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False,
                          "oid": oid})
        self._json({"files": files, "commitOid": commit.oid})

    def lfs_batch(self, seg, query):
        self._require_write()
        self._repo(seg[1], seg[2][: -len(".git")])
        payload = json.loads(self.body)
        if payload.get("operation") != "upload":
            raise HubError(400, "test hub only supports LFS uploads")
        base = f"http://{self.headers['Host']}"
        objects = []
        for obj in payload["objects"]:
            out = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if obj["oid"] not in self.state.lfs_store:  # no "actions" = already stored, nothing to send
                out["actions"] = {"upload": {"href": f"{base}/lfs-upload/{obj['oid']}"}}
            objects.append(out)
        self._json({"transfer": "basic", "objects": objects}, headers={"Content-Type": "application/vnd.git-lfs+json"})

    def lfs_put(self, seg, query):
        data = self.body
        if hashlib.sha256(data).hexdigest() != seg[1]:
            raise HubError(400, "LFS upload does not match its oid")
        self.state.lfs_store[seg[1]] = data
        self._send(200)

    def commit(self, seg, query):
        self._require_write()
        repo = self._repo(seg[2], seg[3])
        branch = seg[5]
        body = self.body
        if self.state.fail_commits:
            raise HubError(500, "Internal Error - injected by the test hub")
        if branch not in repo.branches:
            raise HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        header = lines[0]["value"]
        head = repo.branches[branch]
        if header.get("parentCommit") not in (None, head):
            raise HubError(412, "A commit has happened since. Please refresh and try again.")
        files = dict(repo.commits[head].files)
        for item in lines[1:]:
            key, value = item["key"], item["value"]
            if key == "file":
                files[value["path"]] = Blob(base64.b64decode(value["content"]), False)
            elif key == "lfsFile":
                data = self.state.lfs_store.get(value["oid"])
                if data is None:
                    raise HubError(400, f"LFS object {value['oid']} was never uploaded")
                files[value["path"]] = Blob(data, True)
            elif key == "deletedFile":
                if files.pop(value["path"], None) is None:
                    raise HubError(404, "A file with this name doesn't exist", "EntryNotFound")
            elif key == "deletedFolder":
                prefix = value["path"].rstrip("/") + "/"
                files = {p: b for p, b in files.items() if not p.startswith(prefix)}
            else:
                raise HubError(400, f"test hub does not know commit operation {key!r}")
        commit = self.state.new_commit(repo, head, header["summary"], files)
        repo.branches[branch] = commit.oid
        base = f"http://{self.headers['Host']}"
        self._json({"success": True, "commitOid": commit.oid, "hookOutput": "",
                    "commitUrl": f"{base}/datasets/{repo.repo_id}/commit/{commit.oid}"})

    def tag(self, seg, query):
        self._require_write()
        repo = self._repo(seg[2], seg[3])
        commit = self._commit(repo, seg[5])
        name = json.loads(self.body)["tag"]
        if name in repo.tags:  # tags are immutable here, as they should be for releases
            raise HubError(409, f"Tag {name} already exists")
        repo.tags[name] = commit.oid
        self._json({})

    def resolve(self, seg, query):
        repo = self._repo(seg[1], seg[2])
        commit = self._commit(repo, seg[4])
        path = "/".join(seg[5:])
        blob = commit.files.get(path)
        if blob is None:
            raise HubError(404, f"{path} does not exist at {commit.oid}", "EntryNotFound")
        headers = {"X-Repo-Commit": commit.oid, "ETag": f'"{blob.etag}"'}
        broken = self.state.broken.get("resolve")  # (here: a function of the headers it would send)
        self._send(200, blob.data, broken(headers) if broken else headers, "application/octet-stream")


class HubServer:
    """ThreadingHTTPServer on 127.0.0.1 and a free port, serving a fresh HubState."""

    def __init__(self, token: str | None = None):
        self.state = HubState(token)
        handler = type("BoundHandler", (Handler,), {"state": self.state})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="test-hub", daemon=True)

    def start(self) -> HubServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=5)
