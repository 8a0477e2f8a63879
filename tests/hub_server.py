"""A fake Hugging Face Hub on 127.0.0.1 for tests: the slice of the Hub's HTTP API that
huggingface_hub (2.x, httpx2 client) uses to create a repo, commit small files and download them.

Routes (read from the installed client's source: `hf_api.py`, `_commit_api.py`, `file_download.py`):

    POST /api/repos/create                        HfApi.create_repo (409 + {"url"} when it exists)
    POST /api/validate-yaml                       create_commit, when README.md is in the commit
    POST /api/{type}s/{repo}/preupload/{rev}      _fetch_upload_modes: "lfs" for the paths the
        branch's .gitattributes sends to LFS (as the Hub's default one: *.safetensors, *.bin, *.pt),
        "regular" for the others; the remote oid (sha256 of an LFS file, git blob sha1 of another)
    POST /[{type}s/]{repo}.git/info/lfs/objects/batch   Git LFS batch API (`lfs.py`), "basic"
        transfer: an upload action pointing at this server, a verify action at huggingface.co
        (which the client rewrites to its endpoint, `fix_hf_endpoint_in_url`), none for an
        object the repository stores
    PUT  /lfs-storage/{oid}?X-Amz-Signature=...   the upload action's href, a presigned storage
        address: no token, the signature in its query; checks sha256 and size
    POST /[{type}s/]{repo}.git/info/lfs/objects/verify  the verify action: the object is stored
    POST /api/{type}s/{repo}/commit/{rev}         _send_commit: NDJSON header, base64 "file" lines
        and "lfsFile" lines naming an uploaded object by its sha256
    POST /api/{type}s/{repo}/branch/{branch}      HfApi.create_branch
    GET  /api/{type}s/{repo}[/revision/{rev}]     HfApi.repo_info / model_info (sha, siblings)
    HEAD/GET /[{type}s/]{repo}/resolve/{rev}/{path}  a file download: X-Repo-Commit, ETag (the
        sha256 of an LFS file, as the Hub's X-Linked-Etag), Content-Length

Errors carry the headers the client maps to its exceptions: `X-Error-Code: RepoNotFound`
(401 without a token, like the real Hub, 404 with one), `RevisionNotFound`, `EntryNotFound`,
`GatedRepo` (401 without a token, 403 for a user who has not accepted the conditions).
Writes need a known token (`Authorization: Bearer ...`); private repos need one to be read.
`fail(pattern, status, times)` makes the next matching requests fail (fault injection);
`misbehave(pattern, ...)` makes them hostile or broken: other headers (a path as the ETag, a lying
size, a redirect anywhere), a different streamed body (endless, or one byte at a time), the usual
body padded to an exact size or followed by whitespace that never ends, headers sent one byte at a
time, or no answer at all. `SilentEndpoint` accepts TCP connections and never
answers.

State is in memory; commit ids are sha1 hex of the commit content (parent, message, file oids),
file oids are git blob sha1s (sha256 for LFS files), as on the Hub. Files committed by `add_repo`
are regular; a push's LFS files go through the LFS routes. Xet uploads are not implemented.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import itertools
import json
import re
import socket
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

DEFAULT_TOKENS = {"hf_fake_write_token": "tester"}
GITATTRIBUTES = (
    b"*.bin filter=lfs diff=lfs merge=lfs -text\n*.pt filter=lfs diff=lfs merge=lfs -text\n"
    b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
)
LFS_MEDIA_TYPE = "application/vnd.git-lfs+json"
HUB = "https://huggingface.co"  # the Hub's own address, which it writes in the hrefs it gives
REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
_REPO = r"(?P<repo>[^/]+/[^/]+)"
_TYPE = r"(?P<type>models|datasets|spaces)"


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob, which the Hub reports as a regular file's oid / ETag."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(data: bytes) -> bytes:
    """The pointer file git stores for an LFS file."""
    oid = hashlib.sha256(data).hexdigest()
    return (
        f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {len(data)}\n".encode()
    )


@dataclass
class Commit:
    oid: str
    parent: str | None
    message: str
    files: dict[str, bytes]
    lfs: set[str] = field(default_factory=set)  # the paths stored in Git LFS

    def file_id(self, path: str) -> str:
        """What the Hub names a file by: the sha256 of an LFS file, git's blob sha1 of another."""
        data = self.files[path]
        return hashlib.sha256(data).hexdigest() if path in self.lfs else git_blob_sha1(data)


@dataclass
class Repo:
    repo_id: str
    repo_type: str
    private: bool
    gated: bool = False  # files need a token of an approved user; metadata stays public
    approved: set[str] = field(default_factory=set)
    branches: dict[str, str] = field(default_factory=dict)
    commits: dict[str, Commit] = field(default_factory=dict)
    objects: dict[str, bytes] = field(default_factory=dict)  # LFS storage, by sha256

    def resolve(self, revision: str) -> str | None:
        if revision in self.branches:
            return self.branches[revision]
        if re.fullmatch(r"[0-9a-f]{40}", revision) and revision in self.commits:
            return revision
        return None


@dataclass
class Reply:
    status: int
    body: bytes = b""
    headers: dict[str, str | None] = field(default_factory=dict)  # None: leave the header out
    chunks: Iterable[bytes] | None = None  # a body sent with chunked encoding instead of `body`
    pace: float = 0.0  # seconds before each chunk (or each header byte with slow_headers)
    slow_headers: bool = False  # the status line and headers go one byte at a time
    stall: bool = False  # never answer; the connection stays open until the server stops

    @classmethod
    def json(cls, status: int, obj, **headers: str) -> Reply:
        return cls(
            status, json.dumps(obj).encode(), {"Content-Type": "application/json", **headers}
        )

    @classmethod
    def error(cls, status: int, message: str, code: str | None = None, **headers: str) -> Reply:
        extra = {"X-Error-Message": message, **headers}
        if code is not None:
            extra["X-Error-Code"] = code
        return cls.json(status, {"error": message}, **extra)


@dataclass
class Fault:
    """What the next `remaining` requests matching `pattern` (and `method`) get instead of the usual
    reply: an injected error (`error`), or the usual reply changed by `apply`."""

    pattern: re.Pattern
    remaining: int
    method: str | None
    status: int | None = None
    error: bool = False
    headers: dict[str, str | None] = field(default_factory=dict)
    body: Iterable[bytes] | None = None
    pace: float = 0.0
    slow_headers: bool = False
    stall: bool = False
    pad_to: int | None = None
    endless: bool = False

    def matches(self, method: str, path: str) -> bool:
        return (
            self.remaining > 0
            and self.method in (None, method)
            and self.pattern.search(path) is not None
        )

    def error_reply(self) -> Reply:
        if self.status == 401:
            return Reply.error(401, "Invalid credentials in Authorization header")
        return Reply.error(self.status, f"Injected failure (HTTP {self.status})")

    def apply(self, reply: Reply) -> Reply:
        body, chunks = reply.body if self.body is None else b"", self.body
        if self.pad_to is not None:  # trailing whitespace keeps a JSON answer valid
            body += b" " * (self.pad_to - len(body))
        if self.endless:
            body, chunks = b"", itertools.chain([body], itertools.repeat(b" " * (1 << 16)))
        return Reply(
            self.status or reply.status,
            body,
            {**reply.headers, **self.headers},
            chunks=chunks,
            pace=self.pace,
            slow_headers=self.slow_headers,
            stall=self.stall,
        )


class FakeHub:
    """The fake Hub: `with FakeHub() as hub: ... hub.url ...` serves until the block ends."""

    def __init__(self, tokens: dict[str, str] | None = None) -> None:
        self.tokens = dict(DEFAULT_TOKENS if tokens is None else tokens)
        self.repos: dict[tuple[str, str], Repo] = {}
        self.faults: list[Fault] = []
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status)
        self.authorized: list[tuple[str, str]] = []  # (method, path) of requests with a token
        self.streamed = 0  # body bytes written by replies with `chunks`
        self.stopping = threading.Event()  # ends stalled and dripping replies
        self._lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        self._counter = 0
        self._tickets: dict[str, tuple[Repo, str, int]] = {}  # upload ticket -> (repo, oid, size)

    # -- lifecycle ---------------------------------------------------------------------------
    @property
    def url(self) -> str:
        assert self._server is not None, "FakeHub is not running"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeHub:
        hub = self

        class Handler(_Handler):
            fake = hub

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        server.block_on_close = False
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self.stopping.set()
        self._server.shutdown()
        self._server.server_close()
        with self._lock:  # close kept-alive client connections so their handler threads end now
            for conn in list(self._connections):
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self._connections.clear()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- test helpers ------------------------------------------------------------------------
    def add_repo(
        self,
        repo_id: str,
        files: dict[str, bytes] | None = None,
        *,
        private: bool = False,
        gated: bool = False,
        approved: set[str] = frozenset(),
        repo_type: str = "model",
    ) -> str:
        """Create a repository (with the Hub's initial .gitattributes commit) and optionally commit
        `files` to main; returns the head commit id. A gated repo serves files only to the users in
        `approved` (by user name, see `tokens`)."""
        with self._lock:
            repo = Repo(
                repo_id=repo_id,
                repo_type=repo_type,
                private=private,
                gated=gated,
                approved=set(approved),
            )
            self.repos[(repo_type, repo_id)] = repo
            self._commit(repo, "main", {".gitattributes": GITATTRIBUTES}, "initial commit")
            if files:
                self._commit(repo, "main", files, "add files")
            return repo.branches["main"]

    def files(
        self, repo_id: str, revision: str = "main", repo_type: str = "model"
    ) -> dict[str, bytes]:
        with self._lock:
            repo = self.repos[(repo_type, repo_id)]
            return dict(repo.commits[repo.resolve(revision)].files)

    def head(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> str | None:
        with self._lock:
            return self.repos[(repo_type, repo_id)].resolve(revision)

    def lfs_files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> set[str]:
        """The paths stored in Git LFS at `revision`."""
        with self._lock:
            repo = self.repos[(repo_type, repo_id)]
            return set(repo.commits[repo.resolve(revision)].lfs)

    def n_commits(self, repo_id: str, repo_type: str = "model") -> int:
        with self._lock:
            return len(self.repos[(repo_type, repo_id)].commits)

    def fail(
        self, pattern: str, status: int = 500, times: int = 1, method: str | None = None
    ) -> None:
        """Make the next `times` requests whose path matches `pattern` (re.search) answer
        `status`."""
        with self._lock:
            self.faults.append(
                Fault(
                    re.compile(pattern),
                    times,
                    method.upper() if method else None,
                    status=status,
                    error=True,
                )
            )

    def misbehave(
        self,
        pattern: str,
        *,
        method: str | None = None,
        times: int = 1,
        status: int | None = None,
        headers: dict[str, str | None] | None = None,
        body: Iterable[bytes] | None = None,
        pace: float = 0.0,
        slow_headers: bool = False,
        stall: bool = False,
        pad_to: int | None = None,
        endless: bool = False,
    ) -> None:
        """Change the next `times` replies to requests whose path matches `pattern`: another
        `status`, `headers` set over the usual ones (None removes one), the chunks of `body`
        streamed instead of the usual body, the usual body padded with spaces to `pad_to` bytes,
        the usual body followed by spaces for ever (`endless`, streamed), `pace` seconds before
        each chunk (or each byte of the status line and headers, with `slow_headers`), or no answer
        at all (`stall`)."""
        with self._lock:
            self.faults.append(
                Fault(
                    re.compile(pattern),
                    times,
                    method.upper() if method else None,
                    status=status,
                    headers=dict(headers or {}),
                    body=body,
                    pace=pace,
                    slow_headers=slow_headers,
                    stall=stall,
                    pad_to=pad_to,
                    endless=endless,
                )
            )

    def calls(self, method: str, pattern: str) -> list[tuple[str, str, int]]:
        with self._lock:
            return [r for r in self.requests if r[0] == method and re.search(pattern, r[1])]

    # -- internals ---------------------------------------------------------------------------
    def _commit(
        self, repo: Repo, branch: str, files: dict[str, bytes], message: str, deleted=(), lfs=()
    ) -> str:
        parent = repo.branches.get(branch)
        tree = dict(repo.commits[parent].files) if parent else {}
        stored = set(repo.commits[parent].lfs) if parent else set()
        for path in deleted:
            tree.pop(path, None)
        tree.update(files)
        stored = (stored - set(deleted) - set(files)) | set(lfs)
        self._counter += 1
        digest = hashlib.sha1(
            json.dumps(
                [
                    parent,
                    message,
                    self._counter,
                    sorted((p, git_blob_sha1(d)) for p, d in tree.items()),
                ]
            ).encode()
        ).hexdigest()
        repo.commits[digest] = Commit(digest, parent, message, tree, stored)
        repo.branches[branch] = digest
        return digest

    def _user(self, headers) -> tuple[str | None, Reply | None]:
        auth = headers.get("Authorization")
        if not auth:
            return None, None
        token = auth.split(" ", 1)[1] if " " in auth else auth
        if token not in self.tokens:
            return None, Reply.error(401, "Invalid credentials in Authorization header")
        return self.tokens[token], None

    def _readable(
        self, repo_type: str, repo_id: str, user: str | None
    ) -> tuple[Repo | None, Reply | None]:
        repo = self.repos.get((repo_type, repo_id))
        if repo is None or (repo.private and user is None):
            if (
                user is None
            ):  # like the Hub: unauthenticated callers cannot tell missing from private
                return None, Reply.error(401, "Invalid username or password.", "RepoNotFound")
            return None, Reply.error(404, "Repository not found", "RepoNotFound")
        return repo, None

    def _writable(
        self, repo_type: str, repo_id: str, user: str | None
    ) -> tuple[Repo | None, Reply | None]:
        if user is None:
            return None, Reply.error(401, "You must be authenticated to write to a repository")
        return self._readable(repo_type, repo_id, user)

    def handle(self, method: str, raw_path: str, headers, body: bytes) -> Reply:
        split = urlsplit(raw_path)
        path, query = split.path, parse_qs(split.query)
        with self._lock:
            if headers.get("Authorization"):
                self.authorized.append((method, path))
            fault = next((f for f in self.faults if f.matches(method, path)), None)
            if fault is not None:
                fault.remaining -= 1
            if fault is not None and fault.error:
                reply = fault.error_reply()
            else:
                reply = self._route(method, path, query, headers, body)
                reply = reply if fault is None else fault.apply(reply)
            self.requests.append((method, path, reply.status))
            return reply

    # (methods, path pattern, handler name): handlers take (match, user, body)
    ROUTES = (
        ({"POST"}, r"/api/repos/create", "_route_create"),
        ({"POST"}, r"/api/validate-yaml", "_route_validate_yaml"),
        (
            {"POST"},
            rf"/api/{_TYPE}/{_REPO}/(?P<op>preupload|commit|branch)/(?P<rev>[^/]+)",
            "_route_write",
        ),
        (
            {"POST"},
            rf"/(?:(?P<type>datasets|spaces)/)?{_REPO}\.git/info/lfs/objects/(?P<op>batch|verify)",
            "_route_lfs",
        ),
        ({"PUT"}, r"/lfs-storage/(?P<oid>[0-9a-f]{64})", "_route_lfs_put"),
        ({"GET"}, rf"/api/{_TYPE}/{_REPO}(?:/revision/(?P<rev>[^/]+))?", "_route_info"),
        (
            {"GET", "HEAD"},
            rf"/(?:(?P<type>datasets|spaces)/)?{_REPO}/resolve/(?P<rev>[^/]+)/(?P<file>.+)",
            "_route_resolve",
        ),
    )

    def _route(self, method: str, path: str, query, headers, body: bytes) -> Reply:
        user, bad_token = self._user(headers)
        if bad_token is not None:
            return bad_token
        for methods, pattern, handler in self.ROUTES:
            match = re.fullmatch(pattern, path)
            if match and method in methods:
                return getattr(self, handler)(match, user, body, headers, query)
        return Reply.error(404, f"fake hub: no route for {method} {path}")

    def _route_create(self, match, user: str | None, body: bytes, headers, query) -> Reply:
        return self._create_repo(json.loads(body or b"{}"), user)

    def _route_validate_yaml(self, match, user: str | None, body: bytes, headers, query) -> Reply:
        return self._validate_yaml(json.loads(body or b"{}"))

    def _route_write(self, m, user: str | None, body: bytes, headers, query) -> Reply:
        repo_type, repo_id, rev = REPO_TYPES[m["type"]], m["repo"], unquote(m["rev"])
        repo, err = self._writable(repo_type, repo_id, user)
        if err is not None:
            return err
        if m["op"] == "branch":
            return self._create_branch(repo, rev, json.loads(body or b"{}"))
        if rev not in repo.branches:
            return Reply.error(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        if m["op"] == "preupload":
            return self._preupload(repo, rev, json.loads(body or b"{}"))
        return self._commit_ndjson(repo, rev, body)

    def _route_lfs(self, m, user: str | None, body: bytes, headers, query) -> Reply:
        repo, err = self._writable(REPO_TYPES[m["type"] or "models"], m["repo"], user)
        if err is not None:
            return err
        payload = json.loads(body or b"{}")
        if m["op"] == "verify":
            stored = repo.objects.get(payload.get("oid"))
            if stored is None or len(stored) != payload.get("size"):
                return Reply.error(404, "Object not found")
            return Reply.json(200, {"success": True})
        if LFS_MEDIA_TYPE not in (headers.get("Accept"), headers.get("Content-Type")):
            return Reply.error(406, f"the LFS batch API speaks {LFS_MEDIA_TYPE}")
        if payload.get("operation") != "upload" or "basic" not in payload.get("transfers", []):
            return Reply.error(422, "this fake hub only takes basic LFS uploads")
        return Reply.json(
            200,
            {"transfer": "basic", "objects": [self._lfs_plan(repo, o) for o in payload["objects"]]},
            **{"Content-Type": LFS_MEDIA_TYPE},
        )

    def _lfs_plan(self, repo: Repo, item: dict) -> dict:
        """No actions for an object the repository stores; else upload (to /lfs-storage here,
        signed in its query as a presigned storage address is) and verify (at the Hub's own
        address, as the Hub writes it: the client rewrites it to its endpoint)."""
        oid, size = item["oid"], item["size"]
        plan = {"oid": oid, "size": size, "authenticated": True}
        if oid in repo.objects:
            return plan
        ticket = hashlib.sha1(f"{oid}:{len(self._tickets)}".encode()).hexdigest()
        self._tickets[ticket] = (repo, oid, size)
        prefix = "" if repo.repo_type == "model" else f"{repo.repo_type}s/"
        plan["actions"] = {
            "upload": {"href": f"{self.url}/lfs-storage/{oid}?X-Amz-Signature={ticket}"},
            "verify": {"href": f"{HUB}/{prefix}{repo.repo_id}.git/info/lfs/objects/verify"},
        }
        return plan

    def _route_lfs_put(self, m, user: str | None, body: bytes, headers, query) -> Reply:
        ticket = query.get("X-Amz-Signature", [""])[0]
        repo, oid, size = self._tickets.get(ticket, (None, None, None))
        if oid != m["oid"]:
            return Reply(403, b"<Error><Code>SignatureDoesNotMatch</Code></Error>")
        if len(body) != size or hashlib.sha256(body).hexdigest() != oid:
            return Reply(400, b"<Error><Code>BadDigest</Code></Error>")
        repo.objects[oid] = body
        return Reply(200, headers={"ETag": f'"{hashlib.md5(body).hexdigest()}"'})

    def _route_info(self, m, user: str | None, body: bytes, headers, query) -> Reply:
        repo, err = self._readable(REPO_TYPES[m["type"]], m["repo"], user)
        if err is not None:
            return err
        return self._repo_info(repo, unquote(m["rev"]) if m["rev"] else "main")

    def _route_resolve(self, m, user: str | None, body: bytes, headers, query) -> Reply:
        repo, err = self._readable(REPO_TYPES[m["type"] or "models"], m["repo"], user)
        if err is not None:
            return err
        if repo.gated and user not in repo.approved:
            message = (
                f"Access to model {repo.repo_id} is restricted. You must be "
                "authenticated and have access"
            )
            return Reply.error(401 if user is None else 403, message, "GatedRepo")
        return self._resolve(repo, unquote(m["rev"]), unquote(m["file"]))

    def _create_repo(self, payload: dict, user: str | None) -> Reply:
        if user is None:
            return Reply.error(401, "You must be authenticated to create a repository")
        namespace = payload.get("organization") or user
        repo_id = f"{namespace}/{payload['name']}"
        repo_type = payload.get("type") or "model"
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        url = f"{self.url}/{prefix}{repo_id}"
        if (repo_type, repo_id) in self.repos:
            return Reply.json(409, {"error": "You already created this model repo", "url": url})
        private = payload.get("visibility") == "private" or bool(payload.get("private"))
        self.add_repo(repo_id, private=private, repo_type=repo_type)
        return Reply.json(200, {"url": url, "name": repo_id})

    @staticmethod
    def _validate_yaml(payload: dict) -> Reply:
        import yaml

        content = payload.get("content", "")
        m = re.match(r"^---\s*\n(.*?)\n---\s*\n", content, re.S)
        try:
            data = yaml.safe_load(m.group(1)) if m else {}
        except yaml.YAMLError as exc:
            return Reply.json(
                400, {"errors": [{"message": f"invalid YAML: {exc}"}], "warnings": []}
            )
        if data is not None and not isinstance(data, dict):
            return Reply.json(
                400, {"errors": [{"message": "metadata must be a mapping"}], "warnings": []}
            )
        return Reply.json(200, {"errors": [], "warnings": []})

    def _create_branch(self, repo: Repo, branch: str, payload: dict) -> Reply:
        if branch in repo.branches:
            return Reply.error(409, f"Reference {branch} already exists")
        start = repo.resolve(payload.get("startingPoint") or "main")
        if start is None:
            return Reply.error(404, "Invalid starting point", "RevisionNotFound")
        repo.branches[branch] = start
        return Reply.json(200, {})

    @staticmethod
    def _preupload(repo: Repo, branch: str, payload: dict) -> Reply:
        head = repo.commits[repo.branches[branch]]
        attributes = head.files.get(".gitattributes", b"").decode().splitlines()
        to_lfs = [a.split()[0] for a in attributes if "filter=lfs" in a.split()[1:]]
        files = []
        for item in payload.get("files", []):
            path = item["path"]
            lfs = any(fnmatch.fnmatchcase(path.rsplit("/", 1)[-1], p) for p in to_lfs)
            files.append(
                {
                    "path": path,
                    "uploadMode": "lfs" if lfs else "regular",
                    "shouldIgnore": False,
                    "oid": head.file_id(path) if path in head.files else None,
                }
            )
        return Reply.json(200, {"files": files, "commitOid": repo.branches[branch]})

    def _commit_ndjson(self, repo: Repo, branch: str, body: bytes) -> Reply:
        header, files, deleted, lfs = None, {}, [], set()
        for line in body.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item.get("key"), item.get("value", {})
            if key == "header":
                header = value
            elif key == "file":
                if value.get("encoding") != "base64":
                    return Reply.error(400, "file content must be base64")
                files[value["path"]] = base64.b64decode(value["content"])
            elif key in ("deletedFile", "deletedFolder"):
                deleted.append(value["path"])
            elif key == "lfsFile":
                stored = repo.objects.get(value.get("oid"))
                if value.get("algo") != "sha256" or stored is None:
                    return Reply.error(400, f"LFS object of {value.get('path')} not uploaded")
                if value.get("size", len(stored)) != len(stored):
                    return Reply.error(400, f"LFS object of {value.get('path')} has another size")
                files[value["path"]] = stored
                lfs.add(value["path"])
            else:
                return Reply.error(400, f"unknown commit operation {key!r}")
        if header is None or not header.get("summary"):
            return Reply.error(400, "commit header with a summary is required")
        parent = header.get("parentCommit")
        if parent is not None and parent != repo.branches[branch]:
            return Reply.error(412, "A commit has happened since. Please refresh and try again.")
        message = header["summary"] + (
            "\n\n" + header["description"] if header.get("description") else ""
        )
        oid = self._commit(repo, branch, files, message, deleted, lfs)
        prefix = "" if repo.repo_type == "model" else f"{repo.repo_type}s/"
        return Reply.json(
            200,
            {
                "success": True,
                "commitOid": oid,
                "commitUrl": f"{self.url}/{prefix}{repo.repo_id}/commit/{oid}",
                "pullRequestUrl": None,
            },
        )

    @staticmethod
    def _repo_info(repo: Repo, revision: str) -> Reply:
        sha = repo.resolve(revision)
        if sha is None:
            return Reply.error(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        commit = repo.commits[sha]
        siblings = []
        for path, data in sorted(commit.files.items()):
            if path in commit.lfs:
                pointer = lfs_pointer(data)
                lfs = {
                    "sha256": commit.file_id(path),
                    "size": len(data),
                    "pointerSize": len(pointer),
                }
                siblings.append(
                    {
                        "rfilename": path,
                        "blobId": git_blob_sha1(pointer),
                        "size": len(data),
                        "lfs": lfs,
                    }
                )
            else:
                siblings.append(
                    {"rfilename": path, "blobId": git_blob_sha1(data), "size": len(data)}
                )
        return Reply.json(
            200,
            {
                "id": repo.repo_id,
                "author": repo.repo_id.split("/")[0],
                "sha": sha,
                "private": repo.private,
                "lastModified": "2024-01-01T00:00:00.000Z",
                "tags": [],
                "siblings": siblings,
            },
        )

    @staticmethod
    def _resolve(repo: Repo, revision: str, path: str) -> Reply:
        sha = repo.resolve(revision)
        if sha is None:
            return Reply.error(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        commit = repo.commits[sha]
        if path not in commit.files:
            return Reply.error(404, "Entry not found", "EntryNotFound", **{"X-Repo-Commit": sha})
        return Reply(
            200,
            commit.files[path],
            {
                "Content-Type": "application/octet-stream",
                "ETag": f'"{commit.file_id(path)}"',
                "X-Repo-Commit": sha,
                "Accept-Ranges": "bytes",
            },
        )


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 10  # an idle kept-alive connection ends after this many seconds
    fake: FakeHub

    def setup(self) -> None:
        super().setup()
        with self.fake._lock:
            self.fake._connections.add(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            with self.fake._lock:
                self.fake._connections.discard(self.connection)

    def log_message(self, format, *args) -> None:  # keep test output clean
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _serve(self, method: str) -> None:
        body = self._body()
        reply = self.fake.handle(method, self.path, self.headers, body)
        try:
            if reply.stall:
                self.close_connection = True
                self.fake.stopping.wait()
                return
            self._send_head(reply, method)
            if method != "HEAD":
                self._send_body(reply)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up: fine
            self.close_connection = True

    def _send_head(self, reply: Reply, method: str) -> None:
        headers = dict(reply.headers)
        if "Content-Length" not in headers and reply.chunks is None:
            headers["Content-Length"] = str(len(reply.body))
        elif "Content-Length" not in headers and method != "HEAD":
            headers["Transfer-Encoding"] = "chunked"
        lines = [f"HTTP/1.1 {reply.status} {self.responses.get(reply.status, ('',))[0]}"]
        lines += [f"{key}: {value}" for key, value in headers.items() if value is not None]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        if not reply.slow_headers:
            self.wfile.write(head)
            return
        for i in range(len(head)):
            if self.fake.stopping.wait(reply.pace):
                return
            self.wfile.write(head[i : i + 1])

    def _send_body(self, reply: Reply) -> None:
        """`chunks` go with chunked encoding, or as they are when the reply names its own
        Content-Length (then the connection closes after them: a short body is a cut one)."""
        if reply.chunks is None:
            self.wfile.write(reply.body)
            return
        raw = "Content-Length" in reply.headers
        for chunk in reply.chunks:
            if not chunk:  # an empty chunk would end a chunked body
                continue
            if self.fake.stopping.wait(reply.pace):
                return
            self.wfile.write(chunk if raw else b"%x\r\n%s\r\n" % (len(chunk), chunk))
            with self.fake._lock:
                self.fake.streamed += len(chunk)
        if raw:
            self.close_connection = True
        else:
            self.wfile.write(b"0\r\n\r\n")

    def do_GET(self) -> None:
        self._serve("GET")

    def do_HEAD(self) -> None:
        self._serve("HEAD")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PUT(self) -> None:
        self._serve("PUT")


class SilentEndpoint:
    """Accepts TCP connections on 127.0.0.1 and never answers: a client without read timeouts
    hangs."""

    def __init__(self) -> None:
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._held: list[socket.socket] = []
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                self._held.append(self._sock.accept()[0])
            except OSError:  # closed
                return

    @property
    def connections(self) -> int:
        return len(self._held)

    def __enter__(self) -> SilentEndpoint:
        return self

    def __exit__(self, *exc) -> None:
        try:
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        except OSError:
            pass
        self._sock.close()
        for conn in self._held:
            conn.close()
