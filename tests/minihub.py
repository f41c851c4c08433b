"""minihub (the project's own test server): a small, dependency-free, in-memory Hugging Face Hub-compatible HTTP server for tests.

It speaks the subset of the Hub HTTP API that the *real* ``huggingface_hub`` client uses for
publishing and downloading repos, so tests can drive ``HfApi`` / ``hf_hub_download`` /
``snapshot_download`` unmodified against ``http://127.0.0.1:<port>``.

Supported (models, datasets, spaces):
  whoami-v2, repos/create, repos/delete, model/dataset/space info (+ /revision/<rev>),
  tree (recursive or not), paths-info, refs, commits, branch create/delete, tag create/delete,
  preupload, commit (ndjson: file / lfsFile / deletedFile / deletedFolder),
  git-lfs batch API with the "basic" transfer (PUT + verify), resolve (HEAD/GET, Range).
Not supported: Xet storage (set HF_HUB_DISABLE_XET=1 in the client, or use lfs_mode="never"),
  pull requests (create_pr=True), multipart LFS, squash, gated repos, search/list_models, Spaces runtime.

Usage:
    hub = MiniHub(); hub.start()        # binds 127.0.0.1 on a free port
    os.environ["HF_ENDPOINT"] = hub.url
    ...
    hub.stop()
or ``python minihub.py --port 0`` to run it as a process (prints the URL).

Tried with huggingface_hub 0.36.2, 1.0.1, 1.33.0 and 2.4.0 (upload_folder, create_commit, upload_file,
hf_hub_download, snapshot_download with revision + allow_patterns, HfFileSystem, branches/tags, offline reuse).
"""
from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
DEFAULT_LFS_PATTERNS = [
    "*.safetensors", "*.bin", "*.pt", "*.pth", "*.ckpt", "*.h5", "*.onnx", "*.msgpack", "*.npy", "*.npz",
    "*.pkl", "*.pickle", "*.gguf", "*.tar", "*.tar.gz", "*.zip", "*.gz", "*.7z", "*.arrow", "*.parquet",
    "*.model", "*.tflite", "*.ot",
]
SHA40 = re.compile(r"^[0-9a-f]{40}$")


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def _front_matter(text: str):
    """Return (metadata dict or None, error message or None) for a model card's YAML header."""
    if not text.startswith("---"):
        return None, None
    m = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", text, re.S)
    if not m:
        return None, "YAML metadata block is not closed with '---'"
    try:
        import yaml  # PyYAML is a dependency of huggingface_hub
    except ImportError:
        return {}, None
    try:
        meta = yaml.safe_load(m.group(1)) or {}
    except yaml.YAMLError as e:
        return None, f"Invalid YAML: {e}"
    if not isinstance(meta, dict):
        return None, "YAML metadata must be a mapping"
    return meta, None


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, extra: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.extra = status, message, code, extra or {}


@dataclass
class Entry:
    sha256: str  # key into MiniHub.objects
    size: int
    lfs: bool
    oid: str  # git blob id: of the content (regular file) or of the LFS pointer (LFS file), as on the Hub

    @classmethod
    def regular(cls, sha256: str, data: bytes) -> "Entry":
        return cls(sha256, len(data), False, git_blob_sha1(data))

    @classmethod
    def lfs_file(cls, sha256: str, size: int) -> "Entry":
        return cls(sha256, size, True, git_blob_sha1(lfs_pointer(sha256, size)))


@dataclass
class Commit:
    sha: str
    parent: str | None
    tree: dict  # path -> Entry
    title: str
    message: str
    date: str
    author: str


@dataclass
class Repo:
    type: str
    id: str
    private: bool
    created: str
    branches: dict = field(default_factory=dict)  # name -> sha
    tags: dict = field(default_factory=dict)  # name -> sha
    commits: dict = field(default_factory=dict)  # sha -> Commit


class MiniHub:
    def __init__(self, host: str = "127.0.0.1", port: int = 0, user: str = "testuser",
                 orgs: tuple = ("testorg",), token: str | None = None, lfs_mode: str = "auto",
                 lfs_threshold: int = 10 * 1024 * 1024, lfs_patterns=None):
        """lfs_mode: 'auto' (patterns/size/binary sample, like the Hub), 'always', or 'never' (everything
        is committed inline as a regular file, so neither LFS nor Xet is ever used by the client)."""
        assert host in ("127.0.0.1", "localhost"), "minihub only binds the IPv4 loopback"
        self.host, self.port, self.user, self.orgs, self.token = host, port, user, list(orgs), token
        self.lfs_mode, self.lfs_threshold = lfs_mode, lfs_threshold
        self.lfs_patterns = list(lfs_patterns or DEFAULT_LFS_PATTERNS)
        self.repos: dict = {}  # (type, id) -> Repo
        self.objects: dict = {}  # sha256 -> bytes
        self.lock = threading.RLock()
        self.request_log: list = []  # (method, path, status)
        self._server = None
        self._thread = None

    # ------------------------------------------------------------------ lifecycle
    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> "MiniHub":
        hub = self

        class Handler(_Handler):
            pass

        Handler.hub = hub
        self._server = ThreadingHTTPServer((self.host, self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="minihub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def reset(self) -> None:
        """Forget all repos and stored objects (call between tests if the server is session-scoped)."""
        with self.lock:
            self.repos.clear()
            self.objects.clear()
            self.request_log.clear()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # ------------------------------------------------------------------ model
    def _store(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        self.objects.setdefault(sha, data)
        return sha

    def _make_entry(self, data: bytes, lfs: bool) -> Entry:
        sha = self._store(data)
        return Entry.lfs_file(sha, len(data)) if lfs else Entry.regular(sha, data)

    def _is_lfs_path(self, path: str, size: int, sample: bytes = b"") -> bool:
        if self.lfs_mode == "never":
            return False
        if self.lfs_mode == "always":
            return True
        name = path.rsplit("/", 1)[-1]
        return (any(fnmatch.fnmatch(name, p) or fnmatch.fnmatch(path, p) for p in self.lfs_patterns)
                or size >= self.lfs_threshold or b"\x00" in sample)

    def _commit(self, repo: Repo, branch: str, tree: dict, title: str, message: str = "") -> Commit:
        parent = repo.branches.get(branch)
        date = _now()
        payload = json.dumps([parent, sorted((p, e.sha256, e.lfs) for p, e in tree.items()), title, message, date,
                              time.monotonic_ns()]).encode()
        c = Commit(hashlib.sha1(payload).hexdigest(), parent, tree, title, message, date, self.user)
        repo.commits[c.sha] = c
        repo.branches[branch] = c.sha
        return c

    def create_repo(self, repo_type: str, repo_id: str, private: bool = False) -> Repo:
        with self.lock:
            key = (repo_type, repo_id)
            if key in self.repos:  # the Hub answers 409 *with* the url; exist_ok=True relies on it
                raise HubError(409, f"You already created this {repo_type} repo", None,
                               {"url": f"{self.url}/{URL_PREFIX[repo_type]}{repo_id}"})
            repo = Repo(repo_type, repo_id, private, _now())
            ga = "".join(f"{p} filter=lfs diff=lfs merge=lfs -text\n" for p in self.lfs_patterns).encode()
            self._commit(repo, "main", {".gitattributes": self._make_entry(ga, lfs=False)}, "initial commit")
            self.repos[key] = repo
            return repo

    def get_repo(self, repo_type: str, repo_id: str) -> Repo:
        repo = self.repos.get((repo_type, repo_id))
        if repo is None:
            raise HubError(404, "Repository not found", "RepoNotFound")
        return repo

    def resolve(self, repo: Repo, rev: str) -> Commit:
        rev = unquote(rev)
        if rev in repo.branches:
            return repo.commits[repo.branches[rev]]
        if rev in repo.tags:
            return repo.commits[repo.tags[rev]]
        if rev.startswith("refs/heads/") and rev[11:] in repo.branches:
            return repo.commits[repo.branches[rev[11:]]]
        if rev.startswith("refs/tags/") and rev[10:] in repo.tags:
            return repo.commits[repo.tags[rev[10:]]]
        if SHA40.match(rev) and rev in repo.commits:
            return repo.commits[rev]
        raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")

    # ------------------------------------------------------------------ JSON shapes
    def file_json(self, path: str, e: Entry) -> dict:
        d = {"type": "file", "oid": e.oid, "size": e.size, "path": path}
        if e.lfs:
            d["lfs"] = {"oid": e.sha256, "size": e.size, "pointerSize": len(lfs_pointer(e.sha256, e.size))}
        return d

    @staticmethod
    def dir_json(path: str) -> dict:
        return {"type": "directory", "oid": hashlib.sha1(path.encode()).hexdigest(), "size": 0, "path": path}

    def info_json(self, repo: Repo, commit: Commit, blobs: bool) -> dict:
        siblings = []
        for p, e in sorted(commit.tree.items()):
            s = {"rfilename": p}
            if blobs:
                s.update({"size": e.size, "blobId": e.oid})
                if e.lfs:
                    s["lfs"] = {"sha256": e.sha256, "size": e.size,
                                "pointerSize": len(lfs_pointer(e.sha256, e.size))}
            siblings.append(s)
        ns = repo.id.split("/")[0]
        d = {"_id": hashlib.md5(repo.id.encode()).hexdigest()[:24], "id": repo.id, "author": ns, "sha": commit.sha,
             "lastModified": commit.date, "createdAt": repo.created, "private": repo.private, "disabled": False,
             "gated": False, "downloads": 0, "likes": 0, "tags": [], "siblings": siblings,
             "usedStorage": sum(e.size for e in commit.tree.values())}
        if "README.md" in commit.tree:
            meta, _ = _front_matter(self.objects[commit.tree["README.md"].sha256].decode("utf-8", "replace"))
            if meta:
                d["cardData"] = meta
                d["tags"] = list(meta.get("tags") or [])
                if meta.get("library_name"):
                    d["library_name"] = meta["library_name"]
        if repo.type == "model":
            d["modelId"] = repo.id
        if repo.type == "space":
            d.update({"sdk": "static", "runtime": None})
        return d


class _Handler(BaseHTTPRequestHandler):
    hub: MiniHub = None  # set per server
    protocol_version = "HTTP/1.1"
    server_version = "minihub/0.1"

    def log_message(self, fmt, *args):  # quiet
        pass

    # ---------------------------------------------------------------- plumbing
    def _body(self) -> bytes:
        if getattr(self, "_cached_body", None) is not None:
            return self._cached_body
        te = self.headers.get("Transfer-Encoding", "")
        if "chunked" in te.lower():
            chunks = []
            while True:
                line = self.rfile.readline().strip()
                n = int(line.split(b";")[0], 16)
                if n == 0:
                    while self.rfile.readline().strip():
                        pass
                    break
                chunks.append(self.rfile.read(n))
                self.rfile.readline()
            body = b"".join(chunks)
        else:
            n = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(n) if n else b""
        self._cached_body = body
        return body

    def _json_body(self):
        b = self._body()
        ctype = self.headers.get("Content-Type", "")
        if "application/x-www-form-urlencoded" in ctype:
            return {k: v for k, v in parse_qs(b.decode()).items()}
        return json.loads(b) if b else {}

    def _send(self, status: int, body=b"", headers=None, ctype="application/json"):
        if not isinstance(body, (bytes, bytearray)):
            body = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        for k, v in (headers or {}).items():
            self.send_header(k, str(v))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.hub.request_log.append((self.command, self.path, status))

    def _error(self, err: HubError):
        h = {"X-Error-Message": err.message}
        if err.code:
            h["X-Error-Code"] = err.code
        self._send(err.status, {"error": err.message, **err.extra}, h)

    def _check_auth(self):
        tok = self.hub.token
        if tok is None:
            return
        if self.command == "PUT" and self.path.startswith("/__lfs/"):
            return  # stands for a pre-signed storage URL: the client PUTs LFS content without its token
        auth = self.headers.get("Authorization", "")
        if auth != f"Bearer {tok}":
            raise HubError(401, "Invalid credentials in Authorization header", None)

    def _dispatch(self):
        self._cached_body = None
        try:
            self._check_auth()
            path = urlsplit(self.path).path
            query = parse_qs(urlsplit(self.path).query)
            for pattern, methods, fn in ROUTES:
                m = pattern.match(path)
                if m and self.command in methods:
                    with self.hub.lock:
                        return fn(self, query=query, **m.groupdict())
            raise HubError(404, f"Not found: {self.command} {path}", None)
        except HubError as e:
            self._body()  # drain
            self._error(e)
        except Exception as e:  # pragma: no cover - surface server bugs to the client
            self._body()
            self._error(HubError(500, f"minihub internal error: {type(e).__name__}: {e}"))

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _dispatch

    # ---------------------------------------------------------------- helpers
    def _repo(self, rtype: str, repo: str) -> Repo:
        return self.hub.get_repo(REPO_TYPES[rtype], unquote(repo))

    # ---------------------------------------------------------------- routes
    def whoami(self, query):
        h = self.hub
        return self._send(200, {
            "type": "user", "id": "0" * 24, "name": h.user, "fullname": "Test User", "email": None,
            "emailVerified": True, "isPro": False, "canPay": False,
            "orgs": [{"type": "org", "name": o, "fullname": o, "roleInOrg": "admin"} for o in h.orgs],
            "auth": {"type": "access_token", "accessToken": {"displayName": "minihub", "role": "write",
                                                              "createdAt": _now()}}})

    def create_repo(self, query):
        b = self._json_body()
        name, org = b.get("name"), b.get("organization")
        repo_id = f"{org}/{name}" if org else f"{self.hub.user}/{name}"
        rtype = b.get("type") or "model"
        private = b.get("private") or b.get("visibility") == "private"
        self.hub.create_repo(rtype, repo_id, bool(private))
        return self._send(200, {"url": f"{self.hub.url}/{URL_PREFIX[rtype]}{repo_id}", "name": repo_id,
                                "id": hashlib.md5(repo_id.encode()).hexdigest()[:24]})

    def agent_harnesses(self, query):  # best-effort registry fetched by huggingface_hub >= 1.x
        return self._send(200, {"standardEnvVars": [], "harnesses": {}})

    def telemetry(self, query, rest=None):  # send_telemetry() pings; accept and ignore
        self._body()
        return self._send(200, b"", ctype="text/plain")

    def validate_yaml(self, query):
        content = self._json_body().get("content", "")
        meta, err = _front_matter(content)
        if err:
            return self._send(400, {"errors": [{"message": err}], "warnings": []})
        return self._send(200, {"errors": [], "warnings": []})

    def delete_repo(self, query):
        b = self._json_body()
        org, name, rtype = b.get("organization"), b.get("name"), b.get("type") or "model"
        repo_id = f"{org}/{name}" if org else f"{self.hub.user}/{name}"
        self.hub.get_repo(rtype, repo_id)
        del self.hub.repos[(rtype, repo_id)]
        return self._send(200, b"", ctype="text/plain")

    def info(self, query, rtype, repo, rev=None):
        r = self._repo(rtype, repo)
        c = self.hub.resolve(r, rev or "main")
        return self._send(200, self.hub.info_json(r, c, blobs="blobs" in query))

    def tree(self, query, rtype, repo, rev, path=None):
        r = self._repo(rtype, repo)
        c = self.hub.resolve(r, rev)
        base = unquote(path or "").strip("/")
        recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
        prefix = base + "/" if base else ""
        if base and base in c.tree:
            raise HubError(404, f"{base} is a file", "EntryNotFound")
        files, dirs = [], set()
        for p, e in c.tree.items():
            if not p.startswith(prefix):
                continue
            rest = p[len(prefix):]
            parts = rest.split("/")
            if recursive:
                files.append(self.hub.file_json(p, e))
                for i in range(1, len(parts)):
                    dirs.add(prefix + "/".join(parts[:i]))
            elif len(parts) == 1:
                files.append(self.hub.file_json(p, e))
            else:
                dirs.add(prefix + parts[0])
        if base and not files and not dirs:
            raise HubError(404, f"{base} does not exist", "EntryNotFound")
        out = [self.hub.dir_json(d) for d in sorted(dirs)] + sorted(files, key=lambda f: f["path"])
        return self._send(200, out)

    def paths_info(self, query, rtype, repo, rev):
        r = self._repo(rtype, repo)
        c = self.hub.resolve(r, rev)
        b = self._json_body()
        paths = b.get("paths", [])
        paths = [paths] if isinstance(paths, str) else paths
        out = []
        for p in paths:
            p = p.strip("/")
            if p in c.tree:
                out.append(self.hub.file_json(p, c.tree[p]))
            elif any(k.startswith(p + "/") for k in c.tree):
                out.append(self.hub.dir_json(p))
        return self._send(200, out)

    def refs(self, query, rtype, repo):
        r = self._repo(rtype, repo)
        d = {"branches": [{"name": n, "ref": f"refs/heads/{n}", "targetCommit": s} for n, s in r.branches.items()],
             "tags": [{"name": n, "ref": f"refs/tags/{n}", "targetCommit": s} for n, s in r.tags.items()],
             "converts": []}
        if "include_prs" in query:
            d["pullRequests"] = []
        return self._send(200, d)

    def commits(self, query, rtype, repo, rev):
        r = self._repo(rtype, repo)
        c = self.hub.resolve(r, rev)
        out = []
        while c is not None:
            out.append({"id": c.sha, "title": c.title, "message": c.message, "date": c.date,
                        "authors": [{"user": c.author, "avatar": ""}]})
            c = r.commits.get(c.parent) if c.parent else None
        return self._send(200, out)

    def branch(self, query, rtype, repo, branch):
        r = self._repo(rtype, repo)
        branch = unquote(branch)
        if self.command == "DELETE":
            if branch not in r.branches:
                raise HubError(404, "Branch not found", "RevisionNotFound")
            del r.branches[branch]
            return self._send(200, {})
        if branch in r.branches:
            raise HubError(409, "Reference already exists", None)
        b = self._json_body()
        start = self.hub.resolve(r, b.get("startingPoint") or "main")
        r.branches[branch] = start.sha
        return self._send(200, {})

    def tag(self, query, rtype, repo, rev):
        r = self._repo(rtype, repo)
        if self.command == "DELETE":  # rev is the tag name here
            tag = unquote(rev)
            if tag not in r.tags:
                raise HubError(404, "Tag not found", "RevisionNotFound")
            del r.tags[tag]
            return self._send(200, {})
        b = self._json_body()
        if b["tag"] in r.tags:
            raise HubError(409, "Tag already exists", None)
        r.tags[b["tag"]] = self.hub.resolve(r, rev).sha
        return self._send(200, {})

    def preupload(self, query, rtype, repo, rev):
        r = self._repo(rtype, repo)
        try:
            tree = self.hub.resolve(r, rev).tree
        except HubError:
            tree = {}
        files = []
        for f in self._json_body().get("files", []):
            sample = base64.b64decode(f.get("sample") or "")
            lfs = self.hub._is_lfs_path(f["path"], int(f["size"]), sample)
            old = tree.get(f["path"])
            # the client skips unchanged files when this equals its local oid (sha256 for LFS, git sha1 otherwise)
            oid = (old.sha256 if lfs else old.oid) if old is not None and old.lfs == lfs else None
            files.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular",
                          "shouldIgnore": False, "oid": oid})
        return self._send(200, {"files": files, "commitOid": r.branches.get(unquote(rev))})

    def lfs_batch(self, query, rtype, repo):
        rt = {"datasets": "datasets", "spaces": "spaces"}.get(rtype or "", "models")
        self._repo(rt, repo)
        b = self._json_body()
        if b.get("operation") != "upload":
            raise HubError(400, "minihub only implements LFS uploads", None)
        objs = []
        for o in b.get("objects", []):
            d = {"oid": o["oid"], "size": o["size"]}
            if o["oid"] not in self.hub.objects:
                d["authenticated"] = True
                d["actions"] = {"upload": {"href": f"{self.hub.url}/__lfs/{o['oid']}"},
                                "verify": {"href": f"{self.hub.url}/__lfs/{o['oid']}/verify"}}
            objs.append(d)
        return self._send(200, {"transfer": "basic", "objects": objs, "hash_algo": "sha256"},
                          ctype="application/vnd.git-lfs+json")

    def lfs_put(self, query, oid):
        data = self._body()
        if hashlib.sha256(data).hexdigest() != oid:
            raise HubError(400, "sha256 mismatch for uploaded LFS object", None)
        self.hub.objects[oid] = data
        return self._send(200, b"", ctype="text/plain")

    def lfs_verify(self, query, oid):
        b = self._json_body()
        if oid not in self.hub.objects or len(self.hub.objects[oid]) != b.get("size"):
            raise HubError(404, "LFS object not found", None)
        return self._send(200, {})

    def commit(self, query, rtype, repo, rev):
        r = self._repo(rtype, repo)
        if query.get("create_pr", ["0"])[0] in ("1", "true"):
            raise HubError(400, "minihub does not implement pull requests (create_pr)", None)
        branch = unquote(rev)
        if branch not in r.branches:
            raise HubError(404, f"Invalid rev id: {branch} (commits must target a branch)", "RevisionNotFound")
        tree = dict(r.commits[r.branches[branch]].tree)
        header = {}
        for line in self._body().splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, v = item["key"], item["value"]
            if key == "header":
                header = v
            elif key == "file":
                data = base64.b64decode(v["content"]) if v.get("encoding") == "base64" else v["content"].encode()
                tree[v["path"]] = self.hub._make_entry(data, lfs=False)
            elif key == "lfsFile":
                oid = v["oid"]
                if oid not in self.hub.objects:
                    raise HubError(422, f"LFS object {oid} for {v['path']} was not uploaded", None)
                tree[v["path"]] = Entry.lfs_file(oid, len(self.hub.objects[oid]))
            elif key == "deletedFile":
                if v["path"] not in tree:
                    raise HubError(404, f"File {v['path']} not found", "EntryNotFound")
                del tree[v["path"]]
            elif key == "deletedFolder":
                pre = v["path"].rstrip("/") + "/"
                for p in [p for p in tree if p.startswith(pre)]:
                    del tree[p]
            else:
                raise HubError(400, f"minihub: unsupported commit operation {key!r}", None)
        parent = header.get("parentCommit")
        if parent and parent != r.branches[branch]:
            raise HubError(412, "A commit has happened since. Please refresh and try again.", None)
        c = self.hub._commit(r, branch, tree, header.get("summary", ""), header.get("description", ""))
        return self._send(200, {"success": True, "commitOid": c.sha, "pullRequestUrl": None,
                                "commitUrl": f"{self.hub.url}/{URL_PREFIX[r.type]}{r.id}/commit/{c.sha}"})

    def resolve_file(self, query, rtype, repo, rev, path):
        rt = {"datasets": "datasets", "spaces": "spaces"}.get(rtype or "", "models")
        r = self._repo(rt, repo)
        c = self.hub.resolve(r, rev)
        path = unquote(path)
        e = c.tree.get(path)
        if e is None:
            raise HubError(404, "Entry not found", "EntryNotFound")
        data = self.hub.objects[e.sha256]
        h = {"X-Repo-Commit": c.sha, "Accept-Ranges": "bytes", "ETag": f'"{e.oid}"'}
        if e.lfs:
            h.update({"ETag": f'"{e.sha256}"', "X-Linked-Etag": f'"{e.sha256}"', "X-Linked-Size": e.size})
        status = 200
        rng = self.headers.get("Range")
        if rng and self.command == "GET":
            m = re.match(r"bytes=(\d*)-(\d*)", rng)
            if m:
                start = int(m.group(1) or 0)
                end = int(m.group(2)) if m.group(2) else len(data) - 1
                if start >= len(data):
                    return self._send(416, b"", {"Content-Range": f"bytes */{len(data)}"})
                h["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
                data, status = data[start:end + 1], 206
        if self.command == "HEAD":  # Content-Length must be the file size, without a body
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            for k, v in h.items():
                self.send_header(k, str(v))
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.hub.request_log.append((self.command, self.path, 200))
            return None
        return self._send(status, data, h, ctype="application/octet-stream")


_T = r"(?P<rtype>models|datasets|spaces)"
_R = r"(?P<repo>[^/]+/[^/]+)"
ROUTES = [
    (re.compile(r"^/api/whoami-v2$"), {"GET"}, _Handler.whoami),
    (re.compile(r"^/api/repos/create$"), {"POST"}, _Handler.create_repo),
    (re.compile(r"^/api/repos/delete$"), {"DELETE"}, _Handler.delete_repo),
    (re.compile(r"^/api/validate-yaml$"), {"POST"}, _Handler.validate_yaml),
    (re.compile(r"^/api/agent-harnesses$"), {"GET"}, _Handler.agent_harnesses),
    (re.compile(r"^/api/telemetry(?P<rest>/.*)?$"), {"GET", "HEAD", "POST"}, _Handler.telemetry),
    (re.compile(rf"^/api/{_T}/{_R}/refs$"), {"GET"}, _Handler.refs),
    (re.compile(rf"^/api/{_T}/{_R}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?$"), {"GET"}, _Handler.tree),
    (re.compile(rf"^/api/{_T}/{_R}/paths-info/(?P<rev>[^/]+)$"), {"POST"}, _Handler.paths_info),
    (re.compile(rf"^/api/{_T}/{_R}/commits/(?P<rev>[^/]+)$"), {"GET"}, _Handler.commits),
    (re.compile(rf"^/api/{_T}/{_R}/preupload/(?P<rev>[^/]+)$"), {"POST"}, _Handler.preupload),
    (re.compile(rf"^/api/{_T}/{_R}/commit/(?P<rev>[^/]+)$"), {"POST"}, _Handler.commit),
    (re.compile(rf"^/api/{_T}/{_R}/branch/(?P<branch>[^/]+)$"), {"POST", "DELETE"}, _Handler.branch),
    (re.compile(rf"^/api/{_T}/{_R}/tag/(?P<rev>[^/]+)$"), {"POST", "DELETE"}, _Handler.tag),
    (re.compile(rf"^/api/{_T}/{_R}(?:/revision/(?P<rev>[^/]+))?$"), {"GET", "HEAD"}, _Handler.info),
    (re.compile(r"^/__lfs/(?P<oid>[0-9a-f]{64})$"), {"PUT"}, _Handler.lfs_put),
    (re.compile(r"^/__lfs/(?P<oid>[0-9a-f]{64})/verify$"), {"POST"}, _Handler.lfs_verify),
    (re.compile(r"^/(?:(?P<rtype>datasets|spaces)/)?(?P<repo>[^/]+/[^/]+?)\.git/info/lfs/objects/batch$"),
     {"POST"}, _Handler.lfs_batch),
    (re.compile(r"^/(?:(?P<rtype>datasets|spaces)/)?(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$"),
     {"GET", "HEAD"}, _Handler.resolve_file),
]


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--lfs-mode", default="auto", choices=["auto", "always", "never"])
    a = ap.parse_args()
    hub = MiniHub(port=a.port, lfs_mode=a.lfs_mode).start()
    print(hub.url, flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        hub.stop()
        sys.exit(0)
