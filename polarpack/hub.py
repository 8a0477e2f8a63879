"""Publish and pull `.polar` distributions on the Hugging Face Hub through `huggingface_hub.HfApi`
(its cache, login, HF_ENDPOINT / HF_TOKEN / HF_HUB_OFFLINE and typed errors), adding what a tool fed
untrusted references needs: a time bound on an endpoint that never answers, a size bound on `.polar`
downloads, no `..` in references, and one-line `HubError`s that name the reference and the fix."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huggingface_hub import CommitOperationAdd, HfApi, ModelCard, ModelCardData, constants, get_hf_file_metadata
from huggingface_hub import hf_hub_url
from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, HFValidationError, HfUriError
from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled, RemoteEntryNotFoundError
from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError
from huggingface_hub.utils import parse_hf_uri, validate_repo_id

from ._version import __version__
from .errors import FormatError, HubError
from .format import Distribution, decode, encode, encoding_for_path, size_limit, size_report
from .format import load as load_file
from .presets import get_preset, is_preset

FORM = "hf://owner/repo[@revision]/path/to/file.polar"
LOGIN = "pass --token, set HF_TOKEN or run `hf auth login`"
CLIENT = {"library_name": "polarpack", "library_version": __version__}  # sent in the user agent


@dataclass(frozen=True)
class HubReference:
    """A parsed `hf://[datasets/|spaces/]owner/repo[@revision]/path` reference."""
    repo_id: str
    revision: str | None
    path: str
    repo_type: str = "model"


def is_hub_reference(ref: Any) -> bool:
    """True for strings that start with `hf://`, well formed or not (parse_reference says which)."""
    return isinstance(ref, str) and ref.startswith("hf://")


def _no_dots(ref: str, *parts: str | None) -> None:
    """`..` would step out of the repository (and of the cache's snapshot folder): refuse it."""
    if any(seg in (".", "..") for part in parts if part for seg in part.split("/")):
        raise HubError(f"{ref}: '.' and '..' path segments are not allowed; expected {FORM}")


def parse_reference(ref: str) -> HubReference:
    """Parse a reference with huggingface_hub's own URI parser; HubError (with the form) when malformed."""
    if not is_hub_reference(ref):
        raise HubError(f"{ref!r} is not a Hub reference; expected {FORM}")
    try:
        uri = parse_hf_uri(ref)
    except HfUriError as exc:
        raise HubError(f"{ref}: {str(exc).splitlines()[0]} Expected {FORM}") from None
    if uri.type not in ("model", "dataset", "space") or not uri.path_in_repo or uri.path_in_repo.endswith("/"):
        raise HubError(f"{ref}: not a file in a model, dataset or space repository; expected {FORM}")
    _no_dots(ref, uri.path_in_repo, uri.revision)
    return HubReference(uri.id, uri.revision, uri.path_in_repo, uri.type)


def _hub_error(exc: Exception, action: str, repo: str, api: HfApi, *, path: str | None = None,
               revision: str | None = None, write: bool = False, cache_dir: Any = None) -> HubError:
    """One line per huggingface_hub error type / HTTP status; anything else means no HTTP answer at all."""
    if isinstance(exc, LocalEntryNotFoundError) and exc.__cause__ and not constants.is_offline_mode():
        exc = exc.__cause__  # hf_hub_download's wrapper around what went wrong online
    host, rev = api.endpoint, revision or "main"
    status = exc.response.status_code if isinstance(exc, HfHubHTTPError) else None
    sent_token = status is not None and "authorization" in exc.response.request.headers
    if isinstance(exc, GatedRepoError):
        why = f"repository {repo} is gated: accept its conditions at {host}/{repo}, then authenticate ({LOGIN})"
    elif isinstance(exc, RepositoryNotFoundError):
        why = f"repository {repo} not found on {host}" + (
            " (or your token cannot read it)" if sent_token else f"; if it is private or gated, authenticate ({LOGIN})")
    elif isinstance(exc, RevisionNotFoundError):
        why = f"revision {rev!r} not found in {repo}; use an existing branch, tag or commit"
    elif isinstance(exc, RemoteEntryNotFoundError):
        why = f"file {path!r} not found in {repo} at revision {rev!r}; see {host}/{repo}/tree/{rev}"
    elif isinstance(exc, (OfflineModeIsEnabled, LocalEntryNotFoundError)):
        why = "offline mode is on (HF_HUB_OFFLINE); unset HF_HUB_OFFLINE to push" if write else (
            f"offline mode is on (HF_HUB_OFFLINE) and the file is not in the local cache "
            f"{cache_dir or constants.HF_HUB_CACHE}; unset HF_HUB_OFFLINE and run once online, or use a local file")
    elif status in (401, 403):
        why = f"{'token rejected' if sent_token else 'authentication required'} (HTTP {status}): {LOGIN}" + (
            " with a token that has write access" if write else "")
    elif status is not None:
        why = f"{host} answered HTTP {status} ({_cell(exc.server_message or 'no message')})" + (
            "; try again in a moment" + (" (pushing is safe to repeat)" if write else "") if status >= 500 else "")
    else:
        why = (f"no usable answer from {host} ({type(exc).__name__}, time limit {constants.HF_HUB_ETAG_TIMEOUT} s)"
               f"{'' if write else ' and no cached copy'}; check the connection, proxy and HF_ENDPOINT, then retry")
    return HubError(f"{action}: {why}")


def _remote_size(api: HfApi, url: str) -> int | None:
    """The file's size from one HEAD request bounded by HF_HUB_ETAG_TIMEOUT, not retried on timeouts (hf_hub_download
    retries them for 6 x 60 s); a server that answers 429/5xx gets huggingface_hub's back-off (about 25 s)."""
    timeout = constants.HF_HUB_ETAG_TIMEOUT
    try:
        return api.get_hf_file_metadata(url=url, timeout=timeout).size
    except HfHubHTTPError as exc:
        if exc.response.status_code not in (429, 500, 502, 503, 504):
            raise
    return get_hf_file_metadata(url, token=api.token, timeout=timeout, endpoint=api.endpoint, retry_on_errors=True,
                                **CLIENT).size


def _check_size(ref: str, size: int | None, limit: int | None) -> None:
    if limit is not None and (size is None or size > limit):
        got = "no size, so it cannot be checked against" if size is None else f"{size:,} bytes, over"
        raise HubError(f"{ref}: the Hub reports {got} the {limit:,}-byte limit for .polar files; "
                       "if you trust the file, raise the limit with POLARPACK_MAX_POLAR_BYTES=<bytes>")


def download(ref: str, *, endpoint: str | None = None, token: str | None = None, revision: str | None = None,
             cache_dir: Any = None, max_bytes: int | None = None) -> Path:
    """The cached path of an `hf://` reference's file. `revision` applies when the reference has no `@rev`; with
    `max_bytes`, a file the Hub reports larger is refused before downloading (a cached copy is checked too).
    With HF_HUB_OFFLINE, or when the Hub does not answer, a cached copy serves, as in huggingface_hub."""
    parsed = parse_reference(ref)
    if revision and parsed.revision and revision != parsed.revision:
        raise HubError(f"{ref} names revision {parsed.revision!r} but --revision is {revision!r}; drop one")
    rev = parsed.revision or revision
    _no_dots(ref, rev)
    api, action = HfApi(endpoint=endpoint, token=token or None, **CLIENT), f"cannot download {ref}"
    where = dict(repo_id=parsed.repo_id, filename=parsed.path, repo_type=parsed.repo_type, revision=rev)
    unreachable: Exception | None = None
    if not constants.is_offline_mode():
        try:
            size = _remote_size(api, hf_hub_url(**where, endpoint=api.endpoint))
        except HfHubHTTPError as exc:
            raise _hub_error(exc, action, parsed.repo_id, api, path=parsed.path, revision=rev) from exc
        except Exception as exc:  # no HTTP answer (refused, timed out): a cached copy may still serve
            unreachable = exc
        else:
            _check_size(ref, size, max_bytes)
    try:
        path = Path(api.hf_hub_download(**where, cache_dir=cache_dir, etag_timeout=constants.HF_HUB_ETAG_TIMEOUT,
                                        local_files_only=constants.is_offline_mode() or unreachable is not None))
    except Exception as exc:
        raise _hub_error(unreachable or exc, action, parsed.repo_id, api, path=parsed.path, revision=rev,
                         cache_dir=cache_dir) from exc
    _check_size(ref, path.stat().st_size, max_bytes)
    return path


def pull_file(ref: str, *, endpoint: str | None = None, token: str | None = None, revision: str | None = None,
              cache_dir: Any = None) -> tuple[Distribution, Path]:
    """The distribution of an `hf://` .polar reference and its cached file. The download is bounded by
    `format.size_limit` of the name's encoding; decode errors name `ref`, not the cache path."""
    limit = size_limit(encoding_for_path(parse_reference(ref).path))
    path = download(ref, endpoint=endpoint, token=token, revision=revision, cache_dir=cache_dir, max_bytes=limit)
    return decode(path.read_bytes(), where=ref), path


def pull(ref: str, *, endpoint: str | None = None, token: str | None = None, revision: str | None = None,
         cache_dir: Any = None) -> Distribution:
    """Download `hf://owner/repo[@rev]/file.polar` (either encoding) and return the validated distribution."""
    return pull_file(ref, endpoint=endpoint, token=token, revision=revision, cache_dir=cache_dir)[0]


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
        raise HubError(f"{origin} is already on the Hub; pull it to a file first (polarpack pull REF --out FILE)")
    elif is_preset(origin) and not Path(origin).exists():
        dist, default = get_preset(origin).distribution, origin.split(":", 1)[1]
    else:
        dist, default = load_file(origin), re.sub(r"(\.polar)?(\.json|\.safetensors)?$", "", Path(origin).name)
    stem = stem or default or "distribution"
    if "/" in stem or "\\" in stem or stem.startswith(".") or stem.upper() == "README":
        raise HubError(f"cannot use {stem!r} as the file name on the Hub; pick a plain name such as 'mnv2'")
    return dist, stem, origin


def _base_model(source: Any) -> str | None:
    """The Hub model a distribution was extracted from: polarpack.sources records source.hub = hf://..."""
    try:
        parsed = parse_reference(source["hub"]) if source.get("type") == "hub" else None
    except (HubError, KeyError):
        return None
    return parsed.repo_id if parsed and parsed.repo_type == "model" else None


def _n(value: int | None) -> str:
    return "unknown" if value is None else f"{value:,}"


def _cell(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return text.replace("|", "\\|").replace("\n", " ")


CARD = """
# {stem}: a polarity distribution

The fractions of zero, negative and positive weights in each of the {n} layers of a network (polarpack `.polar`
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


def build_card(dist: Distribution, files: dict[str, bytes], *, repo_id: str, stem: str,
               revision: str | None = None, license: str | None = "mit") -> ModelCard:
    """The README.md model card: no dates or versions, so a re-push of the same distribution changes nothing."""
    rev = f"@{revision}" if revision not in (None, "main") else ""
    source, sizes = dict(dist.source), size_report(dist)
    facts = {"sha256": "not recorded", **source, "extraction": dict(dist.extraction), "producer": dict(dist.producer)}
    facts = [f"- {key}: `{_cell(value)}`" for key, value in sorted(facts.items()) if value != {}]
    layers = [f"| `{_cell(layer.name)}` | {layer.kind} | {'x'.join(map(str, layer.shape or ())) or 'unknown'} | "
              f"{_n(layer.numel)} | {layer.p0:.6g} | {layer.p_neg:.6g} | {layer.p_pos:.6g} |" for layer in dist.layers]
    body = CARD.format(stem=stem, n=len(dist.layers), uri=f"hf://{repo_id}{rev}/{next(iter(files))}",
                       source="\n".join(facts), layers="\n".join(layers),
                       files="\n".join(f"| `{name}` | {len(data):,} |" for name, data in files.items()),
                       signs=_n(sizes.get("sign_pattern_bytes")), floats=_n(sizes.get("float32_bytes")))
    meta = ModelCardData(library_name="polarpack", license=license or None, base_model=_base_model(source),
                         tags=["polarpack", "polarity-distribution"])
    return ModelCard(f"---\n{meta.to_yaml()}\n---\n{body}")


def push(dist_or_path: Any, repo_id: str, *, private: bool = False, revision: str | None = None,
         token: str | None = None, endpoint: str | None = None, message: str | None = None,
         license: str | None = "mit", stem: str | None = None) -> PushResult:
    """Publish a Distribution, a .polar file (only read) or a `paper:` preset in one commit: `<stem>.polar` (JSON,
    when the distribution has that encoding), `<stem>.polar.safetensors` and a README.md model card. Creates the
    repository and the branch `revision` when missing; content the Hub already has gives `changed=False`."""
    dist, stem, origin = _push_input(dist_or_path, stem)
    action = f"cannot push {origin} to {repo_id}"
    try:
        validate_repo_id(repo_id if repo_id.count("/") == 1 else "")
    except HFValidationError:
        raise HubError(f"{action}: {repo_id!r} is not a repository id; use owner/name") from None
    files = {f"{stem}.polar.safetensors": encode(dist, "safetensors")}
    try:
        files = {f"{stem}.polar": encode(dist, "json"), **files}
    except FormatError:  # pattern-granularity distributions only have the safetensors encoding
        pass
    files["README.md"] = str(build_card(dist, files, repo_id=repo_id, stem=stem, revision=revision,
                                        license=license)).encode()
    api = HfApi(endpoint=endpoint, token=token or None, **CLIENT)
    branch, timeout = (revision if revision not in (None, "main") else None), constants.HF_HUB_ETAG_TIMEOUT
    try:
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
        info = api.create_commit(
            repo_id, [CommitOperationAdd(path_in_repo=name, path_or_fileobj=data) for name, data in files.items()],
            commit_message=message or f"Upload {stem}.polar with polarpack {__version__}", revision=revision)
    except Exception as exc:
        raise _hub_error(exc, action, repo_id, api, revision=revision, write=True) from exc
    # huggingface_hub drops files the Hub already has and makes no commit when none is left
    return PushResult(repo_id, str(info.commit_url), info.oid != head, list(files), revision)
