"""Publish and pull `.polar` distributions on the Hugging Face Hub, safe against a hostile or broken
server.

Downloads are polarpack's own: one HEAD and one streamed GET through huggingface_hub's HTTP client
(its endpoint, token, user agent, proxy settings and HF_HUB_OFFLINE), stored in huggingface_hub's
cache layout (`blobs/<etag>`, `snapshots/<commit>/<path>`, `refs/<revision>`), so both share files.
Unlike `hf_hub_download`, every name the server supplies (ETag, commit, size, redirect) is checked
before it names anything on disk, the bytes are counted against the size limit as they arrive and
checked against the ETag in a temporary file before they are moved into place, and the whole call
ends within POLARPACK_HUB_TIMEOUT seconds. Pushes are one `HfApi` commit under the same limit.
Failures are one-line `HubError`s that name the reference and the fix."""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import importlib
import json
import logging
import math
import os
import re
import secrets
import shutil
import threading
import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

from huggingface_hub import (
    CommitOperationAdd,
    HfApi,
    ModelCard,
    ModelCardData,
    constants,
    hf_hub_url,
)
from huggingface_hub import __version__ as hf_version
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    HfUriError,
    HFValidationError,
    OfflineModeIsEnabled,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.file_download import repo_folder_name
from huggingface_hub.utils import (
    build_hf_headers,
    get_async_session,
    get_session,
    hf_raise_for_status,
    parse_hf_uri,
    validate_repo_id,
)

from polarpack._io import atomic_output, atomic_write_bytes, read_bytes
from polarpack._version import __version__
from polarpack.errors import FormatError, HubError, PolarpackError
from polarpack.format import (
    Distribution,
    decode,
    encode,
    encoding_for_path,
    size_limit,
    size_report,
)
from polarpack.format import load as load_file
from polarpack.redact import public_url, redact_urls
from polarpack.sources.presets import get_preset
from polarpack.sources.references import is_hub_reference, is_preset

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


def _short(text: str, limit: int = 200) -> str:
    """Server-supplied text, on one line and not too long to read."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _hub_error(
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
        why = f"{host} answered HTTP {status} ({_cell(_short(exc.server_message or 'no message'))})"
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
        partial = pointer.with_name(f".{pointer.name}.{secrets.token_hex(8)}.tmp")
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
        shown = "nothing" if value is None else repr(_short(value, 80))
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

    def location(self, base: str, value: str) -> str:
        """A redirect's absolute target: http(s) only, never from https down to http."""
        try:
            url = urljoin(base, value)
            parts = urlsplit(url)
            ok = parts.scheme in ("http", "https") and parts.hostname and parts.port != 0
        except ValueError:
            ok = False
        if not ok or (base.startswith("https:") and not url.startswith("https:")):
            raise self.invalid("a redirect Location", value, "an http(s) address")
        return url


def _origin(url: str) -> tuple[str, str | None, int | None]:
    parts = urlsplit(url)
    return parts.scheme, parts.hostname, parts.port or {"http": 80, "https": 443}.get(parts.scheme)


def _raise_for_status(response: Any) -> None:
    """huggingface_hub's typed error for an error answer, without logging the server's X-HF-Warning
    headers as huggingface_hub does (a hostile server could print anything on the terminal)."""
    if response.status_code >= 400:
        headers = [(k, v) for k, v in response.headers.items() if k.lower() != "x-hf-warning"]
        hf_raise_for_status(
            type(response)(response.status_code, headers=headers, request=response.request)
        )


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
        target = job.location(url, response.headers["Location"])
        if _origin(target) != _origin(url):
            break
        url, redirects = target, redirects + 1
        if redirects > MAX_REDIRECTS:
            raise job.fail(f"more than {MAX_REDIRECTS} redirects from {job.endpoint}")
    _raise_for_status(response)
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
    target = job.location(url, headers["Location"]) if redirect else url
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
                url = job.location(url, response.headers["Location"])
                continue
            _raise_for_status(response)
            if response.status_code != 200:
                raise job.fail(f"{job.endpoint} answered HTTP {response.status_code}, not the file")
            cap = min((n for n in (remote.size, job.max_bytes) if n is not None), default=None)
            received = await _receive(response, out, cap)
        finally:
            await response.aclose()
        return _check_received(job, remote, out, received, cap)
    raise job.fail(f"more than {MAX_REDIRECTS} redirects from {job.endpoint}")


async def _receive(response: Any, out: Path, cap: int | None) -> int:
    """The number of bytes received; it stops reading at the first chunk past `cap`."""
    received = 0
    with open(out, "wb") as fh:
        async for chunk in response.aiter_raw():
            received += len(chunk)
            if cap is not None and received > cap:
                break
            fh.write(chunk)
    return received


def _check_received(
    job: _Download, remote: _Remote, out: Path, received: int, cap: int | None
) -> None:
    if cap is not None and received > cap and cap == remote.size:
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
    if cap is not None and received > cap:
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
        raise _hub_error(
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


def _run(coroutine: Any) -> Any:
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
        headers = build_hf_headers(token=token or None, **CLIENT)
        job = _Download(
            ref,
            parsed,
            rev,
            (endpoint or constants.ENDPOINT).rstrip("/"),
            {**headers, "Accept-Encoding": "identity"},
            cache,
            max_bytes,
            hub_timeout(timeout),
        )
        try:
            path = _run(_fetch(job))
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


# -- push -------------------------------------------------------------------------------------


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


def _base_model(source: Any) -> str | None:
    """The Hub model a distribution was extracted from: polarpack.sources.weights records
    source.hub = hf://..."""
    try:
        parsed = parse_reference(source["hub"]) if source.get("type") == "hub" else None
    except (HubError, KeyError):
        return None
    return parsed.repo_id if parsed and parsed.repo_type == "model" else None


def _n(value: int | None) -> str:
    return "unknown" if value is None else f"{value:,}"


def _cell(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return redact_urls(text).replace("|", "\\|").replace("\n", " ")


CARD = """
# {stem}: a polarity distribution

The fractions of zero, negative and positive weights in each of the {n} layers of a network
(polarpack `.polar`
format), for polarity-distribution transfer learning (Igoe, Biswas and Basu, ICLR 2024 Tiny Papers).

## Source
{source}

## Layers
| layer | kind | shape | weights | p0 (zero) | p- (negative) | p+ (positive) |
| --- | --- | --- | ---: | ---: | ---: | ---: |
{layers}

## Size
| what | bytes |
| --- | ---: |
{files}
| the sign pattern, 2 bits per weight | {signs} |
| the float32 weights | {floats} |

## Usage
```bash
polarpack inspect {uri}
polarpack train --dist {uri}
python -c 'from polarpack.hub import pull; print(pull("{uri}").names)'
```
"""


def build_card(
    dist: Distribution,
    files: dict[str, bytes],
    *,
    repo_id: str,
    stem: str,
    revision: str | None = None,
    license: str | None = "mit",
) -> ModelCard:
    """The README.md model card: no dates or versions, so a re-push of the same distribution
    changes nothing."""
    rev = f"@{revision}" if revision not in (None, "main") else ""
    source, sizes = dict(dist.source), size_report(dist)
    facts = {
        "sha256": "not recorded",
        **source,
        "extraction": dict(dist.extraction),
        "producer": dict(dist.producer),
    }
    facts = [f"- {key}: `{_cell(value)}`" for key, value in sorted(facts.items()) if value != {}]
    layers = [
        f"| `{_cell(layer.name)}` | {layer.kind} | "
        f"{'x'.join(map(str, layer.shape or ())) or 'unknown'} | "
        f"{_n(layer.numel)} | {layer.p0:.6g} | {layer.p_neg:.6g} | {layer.p_pos:.6g} |"
        for layer in dist.layers
    ]
    body = CARD.format(
        stem=stem,
        n=len(dist.layers),
        uri=f"hf://{repo_id}{rev}/{next(iter(files))}",
        source="\n".join(facts),
        layers="\n".join(layers),
        files="\n".join(f"| `{name}` | {len(data):,} |" for name, data in files.items()),
        signs=_n(sizes.get("sign_pattern_bytes")),
        floats=_n(sizes.get("float32_bytes")),
    )
    meta = ModelCardData(
        library_name="polarpack",
        license=license or None,
        base_model=_base_model(source),
        tags=["polarpack", "polarity-distribution"],
    )
    return ModelCard(f"---\n{meta.to_yaml()}\n---\n{body}")


class _Late(Exception):
    """A push ran out of time."""


# Set on a push's own thread only: when its requests must end (time.monotonic()). That is a second
# after the caller stopped waiting, so the caller reports the time limit, not the last timeout.
PUSH_GRACE = 1.0
_PUSH_DEADLINE: ContextVar[float | None] = ContextVar("polarpack_push_deadline", default=None)


def _bound_request(request: Any) -> None:
    """A request hook on huggingface_hub's shared client that acts on a push's thread only: no
    request starts after the push's deadline, and none waits past it, so the thread ends soon
    after its caller was told."""
    deadline = _PUSH_DEADLINE.get()
    if deadline is None:
        return
    left = deadline - time.monotonic()
    if left <= 0:
        raise _Late
    timeouts = request.extensions.get("timeout") or dict.fromkeys(("connect", "read", "write"))
    request.extensions["timeout"] = {
        kind: left if value is None else min(value, left) for kind, value in timeouts.items()
    }


class _QuietPush(logging.Filter):
    """huggingface_hub logs each retry of a request ("Retrying in 1s"): a push's one-line error
    says what happened, so its thread's retries are not logged."""

    def filter(self, record: logging.LogRecord) -> bool:
        return _PUSH_DEADLINE.get() is None


def _within(seconds: float, work: Callable[[], Any]) -> Any:
    """work() on a daemon thread, or _Late after `seconds`. HfApi's requests cannot be interrupted
    and most take no timeout, so the caller stops waiting; `_bound_request` ends the thread."""
    session, http_log = get_session(), logging.getLogger("huggingface_hub.utils._http")
    if _bound_request not in session.event_hooks["request"]:
        hooks = session.event_hooks
        session.event_hooks = {**hooks, "request": [*hooks["request"], _bound_request]}
    if not any(isinstance(f, _QuietPush) for f in http_log.filters):
        http_log.addFilter(_QuietPush())
    outcome: dict[str, Any] = {}

    def run() -> None:
        _PUSH_DEADLINE.set(time.monotonic() + seconds + PUSH_GRACE)
        try:
            outcome["result"] = work()
        except BaseException as exc:  # handed to the caller
            outcome["error"] = exc

    thread = threading.Thread(target=run, name="polarpack-hub-push", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive() or isinstance(outcome.get("error"), _Late):
        raise _Late
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def _commit(
    api: HfApi,
    repo_id: str,
    files: dict[str, bytes],
    *,
    private: bool,
    revision: str | None,
    message: str,
) -> tuple[Any, str | None]:
    """(commit info, the head before it): creates the repository and the branch when missing."""
    branch = revision if revision not in (None, "main") else None
    timeout = constants.HF_HUB_ETAG_TIMEOUT
    try:  # the first request is timed, so a silent endpoint fails here
        head = api.repo_info(repo_id, timeout=timeout).sha
    except RepositoryNotFoundError as exc:
        if isinstance(exc, GatedRepoError):
            raise
        api.create_repo(repo_id, private=private, exist_ok=True)
        head = None
    if branch is not None:
        if not branch.startswith("refs/"):
            api.create_branch(repo_id, branch=branch, exist_ok=True)
        head = api.repo_info(repo_id, revision=branch, timeout=timeout).sha
    operations = [
        CommitOperationAdd(path_in_repo=name, path_or_fileobj=data) for name, data in files.items()
    ]
    info = api.create_commit(repo_id, operations, commit_message=message, revision=revision)
    return info, head


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
    files = {f"{stem}.polar.safetensors": encode(dist, "safetensors")}
    try:
        files = {f"{stem}.polar": encode(dist, "json"), **files}
    except FormatError:  # pattern-granularity distributions only have the safetensors encoding
        pass
    files["README.md"] = str(
        build_card(dist, files, repo_id=repo_id, stem=stem, revision=revision, license=license)
    ).encode()
    api = HfApi(endpoint=endpoint, token=token or None, **CLIENT)
    message = message or f"Upload {stem}.polar with polarpack {__version__}"
    try:
        if constants.is_offline_mode():
            raise OfflineModeIsEnabled("HF_HUB_OFFLINE is set")
        info, head = _within(
            seconds,
            lambda: _commit(
                api,
                repo_id,
                files,
                private=private,
                revision=revision,
                message=message,
            ),
        )
    except _Late:
        raise HubError(
            f"{action}: no usable answer from {api.endpoint} within the {seconds:g} s limit "
            f"({TIMEOUT_ENV}); the Hub may still apply the commit, and pushing again is safe "
            "(an unchanged repository gets no new commit)"
        ) from None
    except Exception as exc:
        raise _hub_error(exc, action, repo_id, api.endpoint, revision=revision, write=True) from exc
    # huggingface_hub drops files the Hub already has and makes no commit when none is left
    commit_url = public_url(str(info.commit_url))
    return PushResult(repo_id, commit_url, info.oid != head, list(files), revision)
