"""Publish a distribution on the Hugging Face Hub in one commit, safe against a hostile or broken
server.

Every request is polarpack's own, through a client of huggingface_hub's client factory made for
the call and closed after it (huggingface_hub's headers, token and proxy settings, the Hub's own
commit API): nothing is installed on huggingface_hub's shared client or its loggers. So the whole
push, Git LFS uploads included, is cancelled at POLARPACK_HUB_TIMEOUT seconds, and every answer is
read as it arrives and refused past `ANSWER_LIMIT` bytes. Files the Hub wants in Git LFS (on the
real Hub every `.safetensors` file) go up with Git LFS's "basic" transfer, one PUT per file to the
address the Hub names, before the commit that points to them."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from huggingface_hub import constants
from huggingface_hub.errors import (
    GatedRepoError,
    HFValidationError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
)
from huggingface_hub.utils import (
    build_hf_headers,
    fix_hf_endpoint_in_url,
    get_async_session,
    validate_repo_id,
)

from polarpack._version import __version__
from polarpack.errors import FormatError, HubError
from polarpack.format import Distribution, encode
from polarpack.format import load as load_file
from polarpack.hub.card import build_card
from polarpack.redact import public_url
from polarpack.sources.hub import (
    CLIENT,
    COMMIT,
    TIMEOUT_ENV,
    AnswerTooLong,
    httpx,
    hub_error,
    hub_timeout,
    raise_for_status,
    read_answer,
    run_coroutine,
    short,
    split_endpoint,
)
from polarpack.sources.presets import get_preset
from polarpack.sources.references import is_hub_reference, is_preset

SAMPLE = 512  # bytes of each file the Hub looks at to choose its upload mode, as huggingface_hub
LFS_HEADERS = {  # the media type of Git LFS's batch API
    "Accept": "application/vnd.git-lfs+json",
    "Content-Type": "application/vnd.git-lfs+json",
}


@dataclass(frozen=True)
class PushResult:
    """What `push` did. `changed` is False when the repository already held exactly these files:
    then no commit was made and `commit_url` is the existing head commit."""

    repo_id: str
    commit_url: str | None
    changed: bool
    files: list[str] = field(default_factory=list)
    revision: str | None = None


def _push_input(dist_or_path: Any, stem: str | None) -> tuple[Distribution, str, str]:
    """(distribution, file stem, where it came from). Files are only read, never written."""
    origin = str(dist_or_path)
    if isinstance(dist_or_path, Distribution):
        dist, default, origin = dist_or_path, "distribution", "a Distribution object"
    elif is_hub_reference(origin):
        raise HubError(
            f"{origin} is already on the Hub; pull it to a file first (polarpack pull REF --out "
            "FILE)"
        )
    elif is_preset(origin) and not Path(origin).exists():
        dist, default = get_preset(origin).distribution, origin.split(":", 1)[1]
    else:
        dist, default = (
            load_file(origin),
            re.sub(r"(\.polar)?(\.json|\.safetensors)?$", "", Path(origin).name),
        )
    stem = stem or default or "distribution"
    if "/" in stem or "\\" in stem or stem.startswith(".") or stem.upper() == "README":
        raise HubError(
            f"cannot use {stem!r} as the file name on the Hub; pick a plain name such as 'mnv2'"
        )
    return dist, stem, origin


class _Broken(HubError):
    """The Hub answered something no Hub sends."""


class _Refused(HubError):
    """The Hub (or the host it sends an upload to) refused a step of the push, and said why."""


@dataclass
class _Push:
    """One `push` call: where to, as whom, which files, and the commit it makes."""

    repo_id: str
    endpoint: str
    headers: dict[str, str]
    files: dict[str, bytes]
    private: bool
    revision: str | None
    message: str
    head: str | None = None  # the branch's commit before the push; None for a new repository
    lfs: set[str] = field(default_factory=set)  # the files the Hub wants in Git LFS

    @property
    def api(self) -> str:
        return f"{self.endpoint}/api/models/{self.repo_id}"

    def broken(self, what: str, value: Any, expected: str) -> _Broken:
        shown = repr(short(value if isinstance(value, str) else json.dumps(value), 80))
        return _Broken(
            f"{public_url(self.endpoint)} answered {what} with {shown}, which is not {expected}; "
            "it is not a Hugging Face Hub or it is broken (check HF_ENDPOINT)"
        )

    def host(self, url: str) -> str:
        """Who answers at `url`, as errors name it: the endpoint, or the other host's origin."""
        if url.startswith(f"{self.endpoint}/"):
            return public_url(self.endpoint)
        parts = urlsplit(url)
        return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"

    async def send(
        self, client: Any, method: str, url: str, what: str, *, auth: bool = True, **kw: Any
    ) -> tuple[Any, bytes]:
        """(response, body) of one request, the body read as it arrives within ANSWER_LIMIT.
        `auth=False` sends only the headers given: no token to a host the Hub sends us to."""
        headers = {**(self.headers if auth else {}), **kw.pop("headers", {})}
        request = client.build_request(method, url, headers=headers, **kw)
        response = await client.send(request, stream=True)
        try:
            body = await read_answer(response, f"the answer from {self.host(url)} to {what}")
        finally:
            await response.aclose()
        return response, body

    async def ask(
        self, client: Any, method: str, url: str, what: str, *, ok: tuple[int, ...] = (), **kw: Any
    ) -> Any:
        """The JSON answer to one request (None for a status in `ok`), read within ANSWER_LIMIT;
        an error answer raises huggingface_hub's typed error."""
        response, body = await self.send(client, method, url, what, **kw)
        if response.status_code in ok:
            return None
        raise_for_status(response, body)
        try:
            return json.loads(body)
        except (ValueError, RecursionError):  # not JSON, or nested deeper than Python recurses
            raise self.broken(what, body.decode("utf-8", "replace"), "JSON") from None

    async def head_of(self, client: Any, revision: str | None) -> str:
        """The commit `revision` (default: main) points to, as HfApi.repo_info reads it."""
        url = self.api if revision is None else f"{self.api}/revision/{quote(revision, safe='')}"
        answer = await self.ask(
            client, "GET", url, "a repository lookup", timeout=constants.HF_HUB_ETAG_TIMEOUT
        )
        sha = answer.get("sha") if isinstance(answer, dict) else answer
        if not isinstance(sha, str) or not COMMIT.fullmatch(sha):
            raise self.broken("a repository lookup", sha, "a commit id (40 hex digits)")
        return sha

    async def prepare(self, client: Any) -> None:
        """Create the repository and the branch when missing, and read the branch's head."""
        branch = self.revision if self.revision not in (None, "main") else None
        try:
            self.head = await self.head_of(client, None)
        except RepositoryNotFoundError as exc:
            if isinstance(exc, GatedRepoError):
                raise
            owner, name = self.repo_id.split("/")
            payload = {"name": name, "organization": owner, "private": self.private}
            url = f"{self.endpoint}/api/repos/create"
            await self.ask(client, "POST", url, "creating the repository", ok=(409,), json=payload)
        if branch is not None:
            if not branch.startswith("refs/"):
                url = f"{self.api}/branch/{quote(branch, safe='')}"
                await self.ask(client, "POST", url, "creating the branch", ok=(409,), json={})
            self.head = await self.head_of(client, branch)

    async def modes(self, client: Any) -> dict[str, str]:
        """{file: "regular" or "lfs"} for the files that differ from the branch's, as the Hub's
        preupload answer says (and huggingface_hub reads it)."""
        payload = {
            "files": [
                {"path": p, "sample": base64.b64encode(d[:SAMPLE]).decode(), "size": len(d)}
                for p, d in self.files.items()
            ]
        }
        answer = await self.ask(
            client, "POST", self._at("preupload"), "the upload modes", json=payload
        )
        entries = answer.get("files") if isinstance(answer, dict) else None
        found = {e["path"]: e for e in _listed(entries) if isinstance(e.get("path"), str)}
        modes = {}
        for path, data in self.files.items():
            entry = found.get(path, {})
            mode, oid = entry.get("uploadMode"), entry.get("oid")
            if mode not in ("regular", "lfs"):
                raise self.broken("the upload modes", answer, f"an upload mode for {path}")
            local = hashlib.sha256(data) if mode == "lfs" else _git_blob(data)
            if oid != local.hexdigest() and not entry.get("shouldIgnore"):
                modes[path] = mode if data else "regular"  # empty files cannot be LFS
        return modes

    async def upload(self, client: Any) -> None:
        """Put the LFS files where the Hub's upload plan (Git LFS's batch API, "basic" transfer)
        says, skipping those it stores already; the commit then only points to them."""
        oids = {hashlib.sha256(self.files[p]).hexdigest(): p for p in sorted(self.lfs)}
        what = "the LFS upload plan"
        payload = {
            "operation": "upload",
            "transfers": ["basic"],
            "objects": [{"oid": oid, "size": len(self.files[p])} for oid, p in oids.items()],
            "hash_algo": "sha256",
            "ref": {"name": self.revision or "main"},
        }
        url = f"{self.endpoint}/{self.repo_id}.git/info/lfs/objects/batch"
        answer = await self.ask(client, "POST", url, what, json=payload, headers=LFS_HEADERS)
        objects = answer.get("objects") if isinstance(answer, dict) else None
        plans = {o["oid"]: o for o in _listed(objects) if isinstance(o.get("oid"), str)}
        for oid, path in oids.items():
            if not isinstance(plans.get(oid), dict):
                raise self.broken(what, answer, f"a plan for {path}")
            await self.upload_one(client, path, oid, plans[oid])

    async def upload_one(self, client: Any, path: str, oid: str, plan: dict) -> None:
        """One object of the upload plan: refused, stored already, or PUT (then verified)."""
        if "error" in plan:
            error = plan["error"] if isinstance(plan["error"], dict) else {"message": plan["error"]}
            code = f" (code {short(str(error['code']), 20)})" if "code" in error else ""
            raise _Refused(
                f"{public_url(self.endpoint)} refused to store {path} in Git LFS: "
                f"{short(str(error.get('message') or 'no message'))}{code}"
            )
        actions = plan.get("actions")
        if actions is None:  # the Hub holds these bytes already
            return
        upload, verify = (
            actions.get(k) if isinstance(actions, dict) else None for k in ("upload", "verify")
        )
        for name, action in (("upload", upload), ("verify", verify)):
            if (name == "upload" or action is not None) and not _lfs_action(action):
                raise self.broken(
                    "the LFS upload plan", plan, f"an http(s) {name} address for {path}"
                )
        header = upload.get("header") or {}
        if "chunk_size" in header:
            raise _Refused(
                f"{public_url(self.endpoint)} asked for {path} ({len(self.files[path]):,} bytes) "
                f"in parts of {short(header['chunk_size'], 40)} bytes (a multipart Git LFS "
                "upload), which polarpack does not make: it asks for the basic transfer, one PUT "
                "per file"
            )
        await self.put(client, path, fix_hf_endpoint_in_url(upload["href"], self.endpoint), header)
        if verify is not None:
            url = fix_hf_endpoint_in_url(verify["href"], self.endpoint)
            payload = {"oid": oid, "size": len(self.files[path])}
            what, headers = f"the verification of {path}", verify.get("header") or {}
            response, body = await self.send(
                client, "POST", url, what, json=payload, headers=headers
            )
            raise_for_status(response, body)

    async def put(self, client: Any, path: str, url: str, header: dict[str, str]) -> None:
        """The bytes of `path` to `url` with the action's headers only: the address may be
        another host's (a presigned storage address), which gets no Hub token."""
        what = f"the upload of {path}"
        response, body = await self.send(
            client, "PUT", url, what, auth=False, content=self.files[path], headers=header
        )
        if response.status_code >= 300:
            text = short(body.decode("utf-8", "replace") or "no message")
            raise _Refused(
                f"{self.host(url)} answered {what} with HTTP {response.status_code} ({text})"
            )

    async def commit(self, client: Any) -> tuple[str, str]:
        """(commit id, commit URL) of one commit of the files that changed: the regular ones
        inline, the LFS ones (uploaded before) by their sha256."""
        lines = [{"key": "header", "value": {"summary": self.message, "description": ""}}]
        for path, data in self.files.items():
            if path in self.lfs:
                oid = hashlib.sha256(data).hexdigest()
                value = {"path": path, "algo": "sha256", "oid": oid, "size": len(data)}
                lines.append({"key": "lfsFile", "value": value})
            else:
                content = base64.b64encode(data).decode()
                value = {"content": content, "path": path, "encoding": "base64"}
                lines.append({"key": "file", "value": value})
        answer = await self.ask(
            client,
            "POST",
            self._at("commit"),
            "the commit",
            content=b"".join(json.dumps(line).encode() + b"\n" for line in lines),
            headers={"Content-Type": "application/x-ndjson"},
        )
        oid, url = (
            answer.get(k) if isinstance(answer, dict) else None for k in ("commitOid", "commitUrl")
        )
        if not isinstance(oid, str) or not COMMIT.fullmatch(oid):
            raise self.broken("the commit", oid, "a commit id (40 hex digits)")
        if not isinstance(url, str) or not _web_address(url):
            raise self.broken("the commit", url, "an http(s) address as its commitUrl")
        return oid, url

    def _at(self, operation: str) -> str:
        return f"{self.api}/{operation}/{quote(self.revision or 'main', safe='')}"

    def url_of(self, commit: str | None) -> str | None:
        return None if commit is None else f"{self.endpoint}/{self.repo_id}/commit/{commit}"


def _git_blob(data: bytes) -> Any:
    """The id the Hub gives a regular file: git's blob sha1."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data)


def _web_address(url: str) -> bool:
    try:
        parts = urlsplit(url)
        return parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:
        return False


def _listed(value: Any) -> list[dict]:
    """The objects in `value` if the answer had a list there, else nothing."""
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _lfs_action(action: Any) -> bool:
    """An upload or verify action as Git LFS's batch API gives one: an http(s) href and text
    headers."""
    if not isinstance(action, dict) or not isinstance(action.get("href"), str):
        return False
    header = action.get("header") or {}
    return (
        _web_address(action["href"])
        and isinstance(header, dict)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in header.items())
    )


async def _send(job: _Push, seconds: float) -> tuple[bool, str | None]:
    """(changed, commit URL): every request, LFS uploads included, within `seconds` in all."""
    async with asyncio.timeout(seconds), get_async_session() as client:
        await job.prepare(client)
        modes = await job.modes(client)
        if not modes:  # the Hub has these files already: no commit
            return False, job.url_of(job.head)
        job.files = {p: d for p, d in job.files.items() if p in modes}
        job.lfs = {p for p, mode in modes.items() if mode == "lfs"}
        if job.lfs:
            await job.upload(client)
        oid, url = await job.commit(client)
        return oid != job.head, url


def _files(
    dist: Distribution, stem: str, repo_id: str, revision: str | None, license: str | None
) -> dict[str, bytes]:
    """The files of one push, in commit order: the distribution's encodings, then the card."""
    files = {f"{stem}.polar.safetensors": encode(dist, "safetensors")}
    try:
        files = {f"{stem}.polar": encode(dist, "json"), **files}
    except FormatError:  # pattern-granularity distributions only have the safetensors encoding
        pass
    card = build_card(dist, files, repo_id=repo_id, stem=stem, revision=revision, license=license)
    return {**files, "README.md": str(card).encode()}


def push(
    dist_or_path: Any,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    token: str | None = None,
    endpoint: str | None = None,
    message: str | None = None,
    license: str | None = "mit",
    stem: str | None = None,
    timeout: float | None = None,
) -> PushResult:
    """Publish a Distribution, a .polar file (only read) or a `paper:` preset in one commit:
    `<stem>.polar` (JSON, when the distribution has that encoding), `<stem>.polar.safetensors` and
    a README.md model card, within `timeout` seconds (default $POLARPACK_HUB_TIMEOUT or 60).
    Creates the repository and the branch `revision` when missing; content the Hub already has
    gives `changed=False`."""
    dist, stem, origin = _push_input(dist_or_path, stem)
    action = f"cannot push {origin} to {repo_id}"
    try:
        validate_repo_id(repo_id if repo_id.count("/") == 1 else "")
    except HFValidationError:
        raise HubError(f"{action}: {repo_id!r} is not a repository id; use owner/name") from None
    seconds = hub_timeout(timeout)
    files = _files(dist, stem, repo_id, revision, license)
    endpoint, credentials = split_endpoint(endpoint, action)
    job = _Push(
        repo_id,
        endpoint,
        {**build_hf_headers(token=token or None, **CLIENT), **credentials},
        dict(files),
        private,
        revision,
        message or f"Upload {stem}.polar with polarpack {__version__}",
    )
    try:
        if constants.is_offline_mode():
            raise OfflineModeIsEnabled("HF_HUB_OFFLINE is set")
        changed, commit_url = run_coroutine(_send(job, seconds))
    except TimeoutError:
        raise HubError(
            f"{action}: no usable answer from {public_url(endpoint)} within the {seconds:g} s "
            f"limit ({TIMEOUT_ENV}); the Hub may still apply the commit, and pushing again is safe "
            "(an unchanged repository gets no new commit)"
        ) from None
    except (_Broken, _Refused, AnswerTooLong) as exc:
        raise HubError(f"{action}: {exc}; pushing again is safe") from None
    except HubError:
        raise
    except (OSError, httpx.HTTPError, httpx.InvalidURL) as exc:  # HTTP errors, no answer at all
        raise hub_error(
            exc, action, repo_id, public_url(endpoint), revision=revision, write=True
        ) from exc
    url = None if commit_url is None else public_url(commit_url)
    return PushResult(repo_id, url, changed, list(files), revision)
