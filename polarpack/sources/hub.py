"""The Hugging Face Hub as a source: `hf://` references, and downloads safe against a hostile or
broken server.

Downloads are polarpack's own: one HEAD and one streamed GET through a client of huggingface_hub's
client factory, made for the call and closed after it (its endpoint, token, user agent, proxy
settings and HF_HUB_OFFLINE), stored in huggingface_hub's cache layout (`blobs/<etag>`,
`snapshots/<commit>/<path>`, `refs/<revision>`), so both share files. Unlike `hf_hub_download`,
every name the server supplies (ETag, commit, size, redirect) is checked before it names anything
on disk, the bytes are counted against the announced size (or a ceiling) as they arrive and
checked against the ETag in a temporary file before they are moved into place, and the whole call
ends within POLARPACK_HUB_TIMEOUT seconds. Nothing here changes huggingface_hub's process-wide
state (its shared client, its loggers). Failures are one-line `HubError`s that name the reference
and the fix."""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import hashlib
import importlib
import math
import os
import re
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urljoin, urlsplit, urlunsplit

from huggingface_hub import __version__ as hf_version
from huggingface_hub import (
    constants,
    hf_hub_url,
)
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    HfUriError,
    OfflineModeIsEnabled,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.file_download import repo_folder_name
from huggingface_hub.utils import (
    build_hf_headers,
    get_async_session,
    hf_raise_for_status,
    parse_hf_uri,
)

from polarpack._io import atomic_output, atomic_write_bytes, read_bytes, temporary_path
from polarpack._version import __version__
from polarpack.errors import HubError, PolarpackError
from polarpack.format import (
    Distribution,
    decode,
    encoding_for_path,
    size_limit,
)
from polarpack.redact import public_url
from polarpack.sources.references import is_hub_reference

# huggingface_hub 2 talks through httpx2, 1.x through httpx: one API under two names
httpx = importlib.import_module("httpx2" if int(hf_version.split(".")[0]) >= 2 else "httpx")

FORM = "hf://owner/repo[@revision]/path/to/file.polar"
LOGIN = "pass --token, set HF_TOKEN or run `hf auth login`"
CLIENT = {"library_name": "polarpack", "library_version": __version__}  # sent in the user agent
TIMEOUT_ENV = "POLARPACK_HUB_TIMEOUT"
DEFAULT_TIMEOUT = 60.0  # seconds for a whole pull, download or push
MAX_REDIRECTS = 5
RETRY_STATUS = (429, 500, 502, 503, 504)  # a file lookup answered so is retried with back-off
RETRIES = 4  # 1 + 2 + 4 + 8 s of back-off at most
COMMIT = re.compile(r"[0-9a-f]{40}")
ETAG = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")  # git blob sha1 (regular file) or sha256 (LFS)
SIZE = re.compile(r"[0-9]{1,18}")
# The most bytes of any Hub answer that is not a file (repository info, upload modes, a commit's
# result, an error): the real ones are a few kB, so a larger one is a broken or hostile server.
ANSWER_LIMIT = 4 << 20
# The most bytes a download reads when the server announces no size and the caller sets no limit
# (the Hub announces every file's size; a server that does not may send for ever).
UNANNOUNCED_LIMIT = 1 << 30
# git's rules for ref names (`git check-ref-format`), which also keep a revision a plain path
BAD_REVISION = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]|\.\.|@\{|//|^/|/$|(^|/)\.|\.lock(/|$)")


@dataclass(frozen=True)
class HubReference:
    """A parsed `hf://[datasets/|spaces/]owner/repo[@revision]/path` reference."""

    repo_id: str
    revision: str | None
    path: str
    repo_type: str = "model"


def _no_dots(ref: str, *parts: str | None) -> None:
    """`..` would step out of the repository (and of the cache's snapshot folder), and a backslash
    or a control character is a separator or a trick somewhere: refuse them."""
    if any(
        seg in (".", "..") or re.search(r"[\x00-\x1f\x7f\\]", seg)
        for part in parts
        if part
        for seg in part.split("/")
    ):
        raise HubError(
            f"{ref}: '.' and '..' path segments are not allowed, nor backslashes or control "
            f"characters; expected {FORM}"
        )


def parse_reference(ref: str) -> HubReference:
    """Parse a reference with huggingface_hub's own URI parser; HubError (with the form) when
    malformed."""
    if not is_hub_reference(ref):
        raise HubError(f"{ref!r} is not a Hub reference; expected {FORM}")
    try:
        uri = parse_hf_uri(ref)
    except HfUriError as exc:
        raise HubError(f"{ref}: {str(exc).splitlines()[0]} Expected {FORM}") from None
    if (
        uri.type not in ("model", "dataset", "space")
        or not uri.path_in_repo
        or uri.path_in_repo.endswith("/")
    ):
        raise HubError(
            f"{ref}: not a file in a model, dataset or space repository; expected {FORM}"
        )
    _no_dots(ref, uri.path_in_repo, uri.revision)
    return HubReference(uri.id, uri.revision, uri.path_in_repo, uri.type)


def hub_timeout(seconds: float | None = None) -> float:
    """The time one Hub call may take from start to end: `seconds`, else $POLARPACK_HUB_TIMEOUT,
    else 60. A hostile server may drip bytes for ever; this is what ends it."""
    text = os.environ.get(TIMEOUT_ENV, "").strip() if seconds is None else str(seconds)
    try:
        value = float(text) if text else DEFAULT_TIMEOUT
    except ValueError:
        value = math.nan
    if not 0 < value < math.inf:
        where = f"${TIMEOUT_ENV}" if seconds is None else "the Hub time limit"
        raise HubError(f"{where} must be a number of seconds above 0, got {text!r}")
    return min(value, threading.TIMEOUT_MAX)


def _revision(ref: str, named: str | None, option: str | None) -> str:
    if named and option and named != option:
        raise HubError(f"{ref} names revision {named!r} but --revision is {option!r}; drop one")
    revision = named or option or constants.DEFAULT_REVISION
    _no_dots(ref, revision)
    if BAD_REVISION.search(revision):
        raise HubError(
            f"{ref}: {revision!r} is not a valid branch, tag or commit name; expected {FORM}"
        )
    return revision


def short(text: str, limit: int = 200) -> str:
    """Server-supplied text, on one line and not too long to read."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def hub_error(
    exc: Exception,
    action: str,
    repo: str,
    host: str,
    *,
    path: str | None = None,
    revision: str | None = None,
    write: bool = False,
) -> HubError:
    """One line per huggingface_hub error type / HTTP status; anything else means no HTTP answer at
    all."""
    rev = revision or "main"
    status = exc.response.status_code if isinstance(exc, HfHubHTTPError) else None
    sent_token = status is not None and "authorization" in exc.response.request.headers
    if isinstance(exc, GatedRepoError):
        why = (
            f"repository {repo} is gated: accept its conditions at {host}/{repo}, then "
            f"authenticate ({LOGIN})"
        )
    elif isinstance(exc, RepositoryNotFoundError):
        why = f"repository {repo} not found on {host}" + (
            " (or your token cannot read it)"
            if sent_token
            else f"; if it is private or gated, authenticate ({LOGIN})"
        )
    elif isinstance(exc, RevisionNotFoundError):
        why = f"revision {rev!r} not found in {repo}; use an existing branch, tag or commit"
    elif isinstance(exc, RemoteEntryNotFoundError):
        why = f"file {path!r} not found in {repo} at revision {rev!r}; see {host}/{repo}/tree/{rev}"
    elif isinstance(exc, OfflineModeIsEnabled):
        why = "offline mode is on (HF_HUB_OFFLINE); unset HF_HUB_OFFLINE to push"
    elif status in (401, 403):
        why = (
            f"{'token rejected' if sent_token else 'authentication required'} (HTTP {status}): "
            f"{LOGIN}" + (" with a token that has write access" if write else "")
        )
    elif status is not None:
        # a URL in it loses its credentials with every PolarpackError's message
        why = f"{host} answered HTTP {status} ({short(exc.server_message or 'no message')})"
        if status >= 500:
            why += "; try again in a moment" + (" (pushing is safe to repeat)" if write else "")
    else:
        why = (
            f"no usable answer from {host} ({type(exc).__name__}); check the connection, proxy "
            "and HF_ENDPOINT, then retry"
        )
    return HubError(f"{action}: {why}")


def _check_size(ref: str, size: int | None, limit: int | None, *, what: str) -> None:
    if limit is not None and size is not None and size > limit:
        raise HubError(
            f"{ref}: {what} {size:,} bytes, over the {limit:,}-byte limit for .polar files; "
            "if you trust the file, raise the limit with POLARPACK_MAX_POLAR_BYTES=<bytes>"
        )


# -- the cache --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Cache:
    """One file of one repository in huggingface_hub's cache layout: the bytes in
    `blobs/<etag>`, a relative symlink `snapshots/<commit>/<path>` to them, and `refs/<revision>`
    holding the commit a branch or tag last resolved to (what serves offline)."""

    folder: Path
    path: str

    @classmethod
    def of(cls, cache_dir: Any, ref: HubReference) -> _Cache:
        root = Path(cache_dir or constants.HF_HUB_CACHE)
        return cls(root / repo_folder_name(repo_id=ref.repo_id, repo_type=ref.repo_type), ref.path)

    def blob(self, etag: str) -> Path:
        return self.folder / "blobs" / etag

    def pointer(self, commit: str) -> Path:
        return self.folder / "snapshots" / commit / self.path

    def find(self, revision: str) -> Path | None:
        """The cached file of `revision`, if any (a damaged ref counts as none)."""
        commit = revision if COMMIT.fullmatch(revision) else None
        if commit is None:
            try:
                text = read_bytes(self.folder / "refs" / revision, limit=100, what="cache refs")
            except PolarpackError:
                return None
            commit = text.decode("ascii", "replace").strip()
        pointer = self.pointer(commit) if COMMIT.fullmatch(commit) else None
        return pointer if pointer is not None and pointer.is_file() else None

    def remember(self, revision: str, commit: str) -> None:
        if revision == commit:
            return
        ref = self.folder / "refs" / revision
        try:
            ref.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(ref, commit.encode())
        except OSError:  # a read-only cache still serves what it has
            pass

    def store(self, revision: str, commit: str, blob: Path) -> Path:
        """Point the snapshot at a complete, checked blob (atomically) and remember the ref."""
        pointer = self.pointer(commit)
        pointer.parent.mkdir(parents=True, exist_ok=True)
        partial = temporary_path(pointer)
        try:
            try:
                partial.symlink_to(os.path.relpath(blob, pointer.parent))
            except OSError:  # no symlinks on this file system: a copy, as huggingface_hub does
                shutil.copyfile(blob, partial)
            os.replace(partial, pointer)
        finally:
            partial.unlink(missing_ok=True)
        self.remember(revision, commit)
        return pointer


def _blob_id(path: Path, etag: str) -> str:
    """The id the Hub names a file by: sha256 for LFS files, git's blob sha1 for the others."""
    lfs = len(etag) == 64
    header = b"" if lfs else b"blob %d\0" % path.stat().st_size
    with open(path, "rb") as fh:
        return hashlib.file_digest(
            fh, lambda: hashlib.sha256() if lfs else hashlib.sha1(header)
        ).hexdigest()


# -- download ---------------------------------------------------------------------------------


class _Unreachable(HubError):
    """The Hub gave no answer about the file: a cached copy may serve instead."""


@dataclass(frozen=True)
class _Remote:
    """What the Hub says about a file, each value checked before it names anything on disk."""

    commit: str  # X-Repo-Commit: the snapshot folder
    etag: str  # X-Linked-Etag or ETag: the blob's file name, and the content's hash
    size: int | None  # X-Linked-Size or Content-Length
    url: str  # where the bytes are: the file's URL, or where the Hub redirects (its CDN)


@dataclass
class _Download:
    """One `download` call: what, from where, with which headers, into which cache, within which
    limits."""

    ref: str
    parsed: HubReference
    revision: str
    endpoint: str
    headers: dict[str, str]
    cache: _Cache
    max_bytes: int | None
    seconds: float
    answered: bool = field(default=False)  # the Hub described the file: no cache fallback now

    def fail(self, why: str) -> HubError:
        return HubError(f"cannot download {self.ref}: {why}")

    def invalid(self, name: str, value: str | None, expected: str) -> HubError:
        shown = "nothing" if value is None else repr(short(value, 80))
        return self.fail(
            f"the server sent {shown} as {name}, which is not {expected}; it is not a Hugging Face "
            "Hub or it is broken (check HF_ENDPOINT); nothing was written"
        )

    def no_answer(self, why: str) -> HubError:
        if not self.answered:
            return _Unreachable(
                f"cannot download {self.ref}: no usable answer from {self.endpoint} ({why}) and "
                "no cached copy; check the connection, proxy and HF_ENDPOINT, then retry"
            )
        return self.fail(
            f"the download did not complete ({why}); nothing was kept; retry, and for a large "
            f"file or a slow connection raise {TIMEOUT_ENV}=<seconds>"
        )

    def headers_for(self, url: str) -> dict[str, str]:
        """The token goes to the endpoint only, never to a host it redirects to."""
        if _origin(url) == _origin(self.endpoint):
            return self.headers
        return {k: v for k, v in self.headers.items() if k.lower() != "authorization"}

    def location(self, base: str, value: str | None) -> str:
        """A redirect's absolute target: http(s) only, never from https down to http."""
        try:  # None: a 3xx answer without a Location header (a 304, a broken server)
            url = urljoin(base, value) if value is not None else None
        except ValueError:
            url = None
        if (
            url is None
            or not _http_address(url)
            or (base.startswith("https:") and not url.startswith("https:"))
        ):
            raise self.invalid("a redirect Location", value, "an http(s) address")
        return url


def split_endpoint(endpoint: str | None, action: str) -> tuple[str, dict[str, str]]:
    """The address of the Hub at `endpoint` (default HF_ENDPOINT) without the `user:password@` a
    mirror's URL may carry, and the Basic authorization header that carries them instead, as the
    HTTP client would have sent them. Request URLs end up in exception chains and in the HTTP
    client's log, so credentials go in a header, never in a URL. A malformed endpoint is refused
    here, before any request."""
    endpoint = (endpoint or constants.ENDPOINT).rstrip("/")
    if not _http_address(endpoint):
        raise HubError(
            f"{action}: the Hub endpoint {public_url(endpoint)!r} is not an http(s) address with "
            "a host and a port in 1-65535; fix --endpoint or HF_ENDPOINT"
        )
    parts = urlsplit(endpoint)
    userinfo, at, host = parts.netloc.rpartition("@")
    if not at:
        return endpoint, {}
    user, _, password = userinfo.partition(":")
    basic = base64.b64encode(f"{unquote(user)}:{unquote(password)}".encode()).decode()
    return urlunsplit(parts._replace(netloc=host)), {"authorization": f"Basic {basic}"}


def _http_address(url: str) -> bool:
    """An absolute http(s) URL with a host and a usable port (a port out of range or not a number,
    or an unclosed [IPv6, makes urlsplit raise)."""
    try:
        parts = urlsplit(url)
        return parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
    except ValueError:
        return False


def _origin(url: str) -> tuple[str, str | None, int | None]:
    parts = urlsplit(url)
    return parts.scheme, parts.hostname, parts.port or {"http": 80, "https": 443}.get(parts.scheme)


def raise_for_status(response: Any, body: bytes = b"") -> None:
    """huggingface_hub's typed error for an error answer (`body`: what was read of it), without
    logging the server's X-HF-Warning headers as huggingface_hub does (a hostile server could print
    anything on the terminal)."""
    if response.status_code >= 400:
        skip = ("x-hf-warning", "content-length", "content-encoding", "transfer-encoding")
        headers = [(k, v) for k, v in response.headers.items() if k.lower() not in skip]
        hf_raise_for_status(
            type(response)(
                response.status_code, headers=headers, content=body, request=response.request
            )
        )


class AnswerTooLong(HubError):
    """A Hub answer went past ANSWER_LIMIT."""


async def read_answer(response: Any, what: str) -> bytes:
    """The body of a Hub answer that is not a file, read as it arrives and refused past
    ANSWER_LIMIT, so an endless answer costs one chunk more than the limit, not all memory."""
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > ANSWER_LIMIT:
            raise AnswerTooLong(
                f"{what} went past {ANSWER_LIMIT:,} bytes, the limit for a Hub answer that is not "
                "a file (real ones are a few kB); stopped reading; it is not a Hugging Face Hub "
                "or it is broken (check HF_ENDPOINT)"
            )
    return bytes(body)


async def _head(client: Any, job: _Download) -> _Remote:
    """HEAD the file as huggingface_hub does: a same-host redirect (a renamed repository) is
    followed, one elsewhere (the CDN) carries the answer; 429 and 5xx are retried with back-off."""
    url = hf_hub_url(
        job.parsed.repo_id,
        job.parsed.path,
        repo_type=job.parsed.repo_type,
        revision=job.revision,
        endpoint=job.endpoint,
    )
    retries = redirects = 0
    while True:
        response = await client.head(
            url,
            headers=job.headers_for(url),
            follow_redirects=False,
            timeout=constants.HF_HUB_ETAG_TIMEOUT,
        )
        if response.status_code in RETRY_STATUS and retries < RETRIES:
            await asyncio.sleep(2**retries)
            retries += 1
            continue
        if not response.is_redirect:
            break
        target = job.location(url, response.headers.get("Location"))
        if _origin(target) != _origin(url):
            break
        url, redirects = target, redirects + 1
        if redirects > MAX_REDIRECTS:
            raise job.fail(f"more than {MAX_REDIRECTS} redirects from {job.endpoint}")
    raise_for_status(response)
    if response.status_code != 200 and not response.is_redirect:
        raise job.fail(f"{job.endpoint} answered HTTP {response.status_code}, not the file")
    return _remote(job, response, url)


def _remote(job: _Download, response: Any, url: str) -> _Remote:
    headers, redirect = response.headers, response.is_redirect
    commit = headers.get("X-Repo-Commit")
    etag = headers.get("X-Linked-Etag") or headers.get("ETag")
    size = headers.get("X-Linked-Size") or (None if redirect else headers.get("Content-Length"))
    file_id = (etag or "").removeprefix("W/").strip('"')
    if commit is None or not COMMIT.fullmatch(commit):
        raise job.invalid("X-Repo-Commit", commit, "a commit id (40 hex digits)")
    if COMMIT.fullmatch(job.revision) and commit != job.revision:
        raise job.invalid("X-Repo-Commit", commit, f"the commit asked for, {job.revision}")
    if not ETAG.fullmatch(file_id):
        raise job.invalid("the ETag", etag, "a Hub file id (40 or 64 hex digits)")
    if size is not None and not SIZE.fullmatch(size):
        raise job.invalid("the file size", size, "a number of bytes")
    target = job.location(url, headers.get("Location")) if redirect else url
    return _Remote(commit, file_id, None if size is None else int(size), target)


async def _store(client: Any, job: _Download, remote: _Remote) -> Path:
    """The cached file of `remote`, downloaded first unless its snapshot or blob is there."""
    pointer = job.cache.pointer(remote.commit)
    if pointer.is_file():
        job.cache.remember(job.revision, remote.commit)
        return pointer
    _check_size(job.ref, remote.size, job.max_bytes, what="the Hub reports")
    blob = job.cache.blob(remote.etag)
    if not blob.is_file():
        blob.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(blob) as partial:  # in the cache; removed unless complete and checked
            await _get(client, job, remote, partial)
    return job.cache.store(job.revision, remote.commit, blob)


async def _get(client: Any, job: _Download, remote: _Remote, out: Path) -> None:
    """Stream the file into `out`, following redirects, reading at most one chunk past the
    limit; then check the bytes against the announced size and ETag."""
    url = remote.url
    for _ in range(MAX_REDIRECTS + 1):
        request = client.build_request(
            "GET", url, headers=job.headers_for(url), timeout=constants.HF_HUB_DOWNLOAD_TIMEOUT
        )
        response = await client.send(request, stream=True, follow_redirects=False)
        try:
            if response.is_redirect:
                url = job.location(url, response.headers.get("Location"))
                continue
            raise_for_status(response)
            if response.status_code != 200:
                raise job.fail(f"{job.endpoint} answered HTTP {response.status_code}, not the file")
            limits = (remote.size, job.max_bytes)
            cap = min((n for n in limits if n is not None), default=UNANNOUNCED_LIMIT)
            received = await _receive(response, out, cap)
        finally:
            await response.aclose()
        return _check_received(job, remote, out, received, cap)
    raise job.fail(f"more than {MAX_REDIRECTS} redirects from {job.endpoint}")


async def _receive(response: Any, out: Path, cap: int) -> int:
    """The number of bytes received; it stops reading at the first chunk past `cap`."""
    received = 0
    with open(out, "wb") as fh:
        async for chunk in response.aiter_raw():
            received += len(chunk)
            if received > cap:
                break
            fh.write(chunk)
    return received


def _check_received(job: _Download, remote: _Remote, out: Path, received: int, cap: int) -> None:
    if received > cap and cap == remote.size:
        limit = job.max_bytes
        raise job.fail(
            f"the server announced {remote.size:,} bytes but sent more; stopped reading and kept "
            "nothing"
            + (
                f" (the limit for .polar files is {limit:,} bytes, POLARPACK_MAX_POLAR_BYTES)"
                if limit is not None
                else ""
            )
        )
    if received > cap and job.max_bytes is None:
        raise job.fail(
            f"the server announced no size and sent more than {cap:,} bytes, the ceiling for a "
            "download of unannounced size; stopped reading and kept nothing; it is not a Hugging "
            "Face Hub or it is broken (check HF_ENDPOINT)"
        )
    if received > cap:
        raise job.fail(
            f"more than the {cap:,}-byte limit for .polar files arrived; stopped reading and kept "
            "nothing; if you trust the file, raise the limit with POLARPACK_MAX_POLAR_BYTES=<bytes>"
        )
    if remote.size is not None and received != remote.size:
        raise job.fail(
            f"the connection ended after {received:,} of {remote.size:,} bytes; kept nothing; retry"
        )
    if _blob_id(out, remote.etag) != remote.etag:
        raise job.fail(
            f"the bytes received do not match the ETag {remote.etag} the server announced; kept "
            "nothing; retry, and check HF_ENDPOINT if it persists"
        )


async def _fetch(job: _Download) -> Path:
    """HEAD, then GET into the cache, within `job.seconds` in all."""
    try:
        async with asyncio.timeout(job.seconds), get_async_session() as client:
            remote = await _head(client, job)
            job.answered = True
            return await _store(client, job, remote)
    except HfHubHTTPError as exc:
        raise hub_error(
            exc,
            f"cannot download {job.ref}",
            job.parsed.repo_id,
            job.endpoint,
            path=job.parsed.path,
            revision=job.revision,
        ) from exc
    except TimeoutError as exc:
        raise job.no_answer(f"not done within the {job.seconds:g} s limit, {TIMEOUT_ENV}") from exc
    except httpx.TimeoutException as exc:
        variable = "HF_HUB_DOWNLOAD_TIMEOUT" if job.answered else "HF_HUB_ETAG_TIMEOUT"
        seconds = getattr(constants, variable)
        raise job.no_answer(f"{type(exc).__name__}: silent for {seconds:g} s, {variable}") from exc
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise job.no_answer(type(exc).__name__) from exc


def run_coroutine(coroutine: Any) -> Any:
    """Run a coroutine on a fresh event loop that is never made the thread's current one (whatever
    loop the caller has stays); inside a running loop (a notebook), on a helper thread."""

    def run() -> Any:
        with asyncio.Runner(loop_factory=asyncio.new_event_loop) as runner:
            return runner.run(coroutine)

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return run()
    with concurrent.futures.ThreadPoolExecutor(1) as helper:
        return helper.submit(run).result()


def _offline(cache_dir: Any) -> str:
    return (
        f"offline mode is on (HF_HUB_OFFLINE) and the file is not in the local cache "
        f"{cache_dir or constants.HF_HUB_CACHE}; unset HF_HUB_OFFLINE and run once online, "
        "or use a local file"
    )


def download(
    ref: str,
    *,
    endpoint: str | None = None,
    token: str | None = None,
    revision: str | None = None,
    cache_dir: Any = None,
    max_bytes: int | None = None,
    timeout: float | None = None,
) -> Path:
    """The cached path of an `hf://` reference's file, downloaded within `timeout` seconds
    (default $POLARPACK_HUB_TIMEOUT or 60). `revision` applies when the reference has no `@rev`;
    with `max_bytes`, a larger file is refused (announced, arriving or cached). With
    HF_HUB_OFFLINE, or when the Hub does not answer, a cached copy serves, as in huggingface_hub."""
    parsed = parse_reference(ref)
    rev = _revision(ref, parsed.revision, revision)
    cache = _Cache.of(cache_dir, parsed)
    if constants.is_offline_mode():
        path = cache.find(rev)
        if path is None:
            raise HubError(f"cannot download {ref}: {_offline(cache_dir)}")
    else:
        address, credentials = split_endpoint(endpoint, f"cannot download {ref}")
        headers = build_hf_headers(token=token or None, **CLIENT)
        job = _Download(
            ref,
            parsed,
            rev,
            address,
            {**headers, "Accept-Encoding": "identity", **credentials},
            cache,
            max_bytes,
            hub_timeout(timeout),
        )
        try:
            path = run_coroutine(_fetch(job))
        except _Unreachable:
            path = cache.find(rev)
            if path is None:
                raise
    _check_size(ref, path.stat().st_size, max_bytes, what="the cached copy is")
    return path


def pull_file(
    ref: str,
    *,
    endpoint: str | None = None,
    token: str | None = None,
    revision: str | None = None,
    cache_dir: Any = None,
    timeout: float | None = None,
) -> tuple[Distribution, Path]:
    """The distribution of an `hf://` .polar reference and its cached file. The download is bounded
    by `format.size_limit` of the name's encoding; decode errors name `ref`, not the cache path."""
    limit = size_limit(encoding_for_path(parse_reference(ref).path))
    path = download(
        ref,
        endpoint=endpoint,
        token=token,
        revision=revision,
        cache_dir=cache_dir,
        max_bytes=limit,
        timeout=timeout,
    )
    return decode(read_bytes(path, limit=limit, what=".polar files"), where=ref), path


def pull(
    ref: str,
    *,
    endpoint: str | None = None,
    token: str | None = None,
    revision: str | None = None,
    cache_dir: Any = None,
    timeout: float | None = None,
) -> Distribution:
    """Download `hf://owner/repo[@rev]/file.polar` (either encoding) and return the validated
    distribution."""
    return pull_file(
        ref,
        endpoint=endpoint,
        token=token,
        revision=revision,
        cache_dir=cache_dir,
        timeout=timeout,
    )[0]
