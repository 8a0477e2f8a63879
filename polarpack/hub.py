"""Publish and pull `.polar` distributions on the Hugging Face Hub.

A distribution is a few numbers per layer, so a Hub model repository is a natural place to share
one next to (or instead of) the checkpoint it summarises. `push` uploads it in both encodings plus
a generated model card in one commit; `pull` and `download` fetch `hf://owner/repo[@rev]/path`
references through the regular Hugging Face cache, so offline use, `HF_ENDPOINT`, `HF_TOKEN` and
`HF_HUB_OFFLINE` work as they do for every other Hub-aware tool.

Everything goes through `huggingface_hub` (`hf_hub_download`, `HfApi.create_repo`,
`HfApi.create_commit`); its exceptions are turned into one-line `HubError`s that say what to do.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ._version import __version__
from .errors import FormatError, HubError
from .format import Distribution, decode, encode_json, encode_safetensors, size_report
from .format import load as load_file

HF_PREFIX = "hf://"
EXPECTED_FORM = "hf://owner/repo[@revision]/path/to/file.polar"
CARD_TAGS = ("polarpack", "polarity-distribution")
PAPER = (
    "Igoe, Biswas and Basu, *A Study on Polarity Distributions for Network Learning*, "
    "ICLR 2024 Tiny Papers"
)


# -- references ----------------------------------------------------------------------------


@dataclass(frozen=True)
class HubReference:
    """A parsed `hf://owner/repo[@revision]/path` reference.

    `repo_type` is "model" unless the reference starts with `hf://datasets/` or `hf://spaces/`.
    """

    repo_id: str
    revision: str | None
    path: str
    repo_type: str = "model"

    @property
    def uri(self) -> str:
        prefix = "" if self.repo_type == "model" else f"{self.repo_type}s/"
        rev = f"@{self.revision}" if self.revision is not None else ""
        return f"{HF_PREFIX}{prefix}{self.repo_id}{rev}/{self.path}"

    def __str__(self) -> str:
        return self.uri


def is_hub_reference(ref: Any) -> bool:
    """True for strings that start with `hf://` (whether or not they are well formed)."""
    return isinstance(ref, str) and ref.startswith(HF_PREFIX)


def parse_reference(ref: str) -> HubReference:
    """Parse `hf://owner/repo[@rev]/path` with huggingface_hub's own URI parser.

    Raises HubError (showing the expected form) when the reference is malformed, names a bucket, or
    has no file path.
    """
    if not is_hub_reference(ref):
        raise HubError(f"{ref!r} is not a Hub reference; expected {EXPECTED_FORM}")
    from huggingface_hub.errors import HfUriError
    from huggingface_hub.utils import parse_hf_uri

    try:
        uri = parse_hf_uri(ref)
    except HfUriError as exc:
        reason = _one_line(getattr(exc, "msg", None) or str(exc)).rstrip(". ")
        raise HubError(f"malformed Hub reference {ref!r}: {reason}; expected {EXPECTED_FORM}") from None
    if uri.type == "bucket":
        raise HubError(f"{ref!r} names a storage bucket; polarpack reads repository files: {EXPECTED_FORM}")
    if not uri.path_in_repo or uri.path_in_repo.endswith("/"):
        raise HubError(
            f"Hub reference {ref!r} names a repository but no file in it; expected {EXPECTED_FORM} "
            f"(e.g. {HF_PREFIX}{uri.id}/dist.polar)"
        )
    return HubReference(repo_id=uri.id, revision=uri.revision, path=uri.path_in_repo, repo_type=uri.type)


# -- environment ---------------------------------------------------------------------------


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def is_offline() -> bool:
    """HF_HUB_OFFLINE as huggingface_hub read it at import, or as the environment says now."""
    from huggingface_hub import constants

    return constants.is_offline_mode() or _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE")


def _resolve_endpoint(endpoint: str | None) -> str | None:
    """Explicit argument, else $HF_ENDPOINT now, else None (huggingface_hub's default)."""
    value = endpoint or os.environ.get("HF_ENDPOINT") or None
    return value.rstrip("/") if value else None


def _shown_endpoint(endpoint: str | None) -> str:
    from huggingface_hub import constants

    return endpoint or constants.ENDPOINT


def _resolve_cache_dir(cache_dir: str | os.PathLike | None) -> str | None:
    """Explicit argument, else $HF_HUB_CACHE / $HF_HOME/hub as set now, else the client's default."""
    if cache_dir is not None:
        return str(cache_dir)
    if os.environ.get("HF_HUB_CACHE"):
        return os.path.expanduser(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return os.path.join(os.path.expanduser(os.environ["HF_HOME"]), "hub")
    return None


def _shown_cache_dir(cache_dir: str | None) -> str:
    from huggingface_hub import constants

    return cache_dir or constants.HF_HUB_CACHE


# -- errors --------------------------------------------------------------------------------

_LOGIN_HINT = "pass --token, set HF_TOKEN or run `huggingface-cli login`"


def _one_line(text: Any) -> str:
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return lines[0] if lines else str(text).strip()


def _server_message(exc: Any, sep: str = " ") -> str:
    message = getattr(exc, "server_message", None)
    return f"{sep}{_one_line(message)}" if message else ""


def _status(exc: Any) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


def _sent_token(exc: Any) -> bool:
    request = getattr(getattr(exc, "response", None), "request", None)
    try:
        return request is not None and request.headers.get("authorization") is not None
    except Exception:  # a response built without a request
        return False


def _translate(
    exc: BaseException,
    *,
    action: str,
    repo_id: str,
    endpoint: str | None,
    path: str | None = None,
    revision: str | None = None,
    cache_dir: str | None = None,
    write: bool = False,
) -> HubError | None:
    """Map a huggingface_hub / httpx error to a one-line HubError; None if it is not one of ours."""
    import httpx2
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    host = _shown_endpoint(endpoint)
    rev = revision or "main"
    status = _status(exc)
    need = "a token with write access" if write else "a token"

    if isinstance(exc, GatedRepoError):
        return HubError(
            f"{action}: repository {repo_id} on {host} is gated: accept its conditions at {host}/{repo_id} "
            f"and authenticate with {need} ({_LOGIN_HINT})"
        )
    if isinstance(exc, RepositoryNotFoundError):
        if status == 401 and not _sent_token(exc):
            return HubError(
                f"{action}: repository {repo_id} not found on {host}, or it is private/gated and needs "
                f"authentication: check the repo id (owner/name) and {_LOGIN_HINT}"
            )
        return HubError(
            f"{action}: repository {repo_id} not found on {host} (or your token cannot access it); "
            "check the repo id (owner/name) and the token"
        )
    if isinstance(exc, RevisionNotFoundError):
        return HubError(
            f"{action}: revision {rev!r} not found in {repo_id} on {host}; use an existing branch, tag or commit "
            f"(see {host}/{repo_id}/tree/main)"
        )
    if isinstance(exc, RemoteEntryNotFoundError):
        return HubError(
            f"{action}: file {path!r} not found in {repo_id} at revision {rev!r}; "
            f"see the repository's files at {host}/{repo_id}/tree/{rev}"
        )
    if isinstance(exc, HfHubHTTPError) and status is not None:
        if status == 401:
            rejected = ", token rejected" if _sent_token(exc) else ""
            return HubError(
                f"{action}: authentication required by {host} (HTTP 401{rejected}): {_LOGIN_HINT}"
                f"{' (the token needs write access)' if write else ''}"
            )
        if status == 403:
            return HubError(
                f"{action}: access to {repo_id} denied by {host} (HTTP 403{_server_message(exc, ': ')}): use a token "
                f"{'with write access to' if write else 'that can read'} it ({_LOGIN_HINT})"
            )
        if status >= 500:
            after = "your local file is untouched; try again in a moment (pushing is safe to repeat)" if write else (
                "try again in a moment"
            )
            return HubError(f"{action}: the Hub at {host} failed with HTTP {status}{_server_message(exc, ': ')}; {after}")
        return HubError(f"{action}: the Hub at {host} answered HTTP {status}{_server_message(exc, ': ')}")
    if isinstance(exc, LocalEntryNotFoundError):
        where = _shown_cache_dir(cache_dir)
        if is_offline():
            return HubError(
                f"{action}: offline mode is on (HF_HUB_OFFLINE) and {path!r} from {repo_id}@{rev} is not in the "
                f"local cache {where}; unset HF_HUB_OFFLINE and run once online to cache it, or pass a local file"
            )
        return HubError(
            f"{action}: cannot reach {host} and {path!r} from {repo_id}@{rev} is not in the local cache {where}; "
            "check your connection, proxy and HF_ENDPOINT, then retry"
        )
    if isinstance(exc, OfflineModeIsEnabled):
        return HubError(f"{action}: offline mode is on (HF_HUB_OFFLINE); unset HF_HUB_OFFLINE to reach {host}")
    if isinstance(exc, (httpx2.TransportError, ConnectionError, TimeoutError)):
        return HubError(
            f"{action}: cannot connect to {host} ({_one_line(exc) or type(exc).__name__}); "
            "check your connection, proxy and HF_ENDPOINT, then retry"
        )
    if isinstance(exc, HFValidationError):
        return HubError(f"{action}: {_one_line(exc)}")
    if isinstance(exc, OSError) and not write:  # incomplete download, unwritable or full cache, ...
        return HubError(f"{action}: {_one_line(exc)} (cache: {_shown_cache_dir(cache_dir)}); fix that and retry")
    return None


# -- download / pull -----------------------------------------------------------------------


def _merge_revision(ref: HubReference, revision: str | None, raw: str) -> str | None:
    if revision is not None and ref.revision is not None and revision != ref.revision:
        raise HubError(
            f"{raw} pins revision {ref.revision!r} but revision {revision!r} was also given; drop one of them"
        )
    return ref.revision if ref.revision is not None else revision


def download(
    ref: str,
    *,
    endpoint: str | None = None,
    token: str | None = None,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> Path:
    """Download the file behind `hf://owner/repo[@rev]/path` into the Hugging Face cache.

    Returns the local path (a file in the cache, to be treated as read-only). `endpoint`, `token`
    and `cache_dir` default to $HF_ENDPOINT, $HF_TOKEN (or the cached login) and $HF_HUB_CACHE;
    `revision` applies when the reference has no `@rev`. With HF_HUB_OFFLINE set, only the cache is
    consulted. Failures are one-line HubErrors saying what to do.
    """
    parsed = parse_reference(ref)
    rev = _merge_revision(parsed, revision, ref)
    endpoint = _resolve_endpoint(endpoint)
    cache = _resolve_cache_dir(cache_dir)
    from huggingface_hub import hf_hub_download

    try:
        local = hf_hub_download(
            parsed.repo_id,
            parsed.path,
            repo_type=parsed.repo_type,
            revision=rev,
            endpoint=endpoint,
            token=token or None,
            cache_dir=cache,
            local_files_only=is_offline(),
            library_name="polarpack",
            library_version=__version__,
        )
    except Exception as exc:
        error = _translate(
            exc,
            action=f"cannot download {ref}",
            repo_id=parsed.repo_id,
            endpoint=endpoint,
            path=parsed.path,
            revision=rev,
            cache_dir=cache,
        )
        if error is None:
            raise
        raise error from exc
    return Path(local)


def read_downloaded(path: str | os.PathLike, ref: str) -> Distribution:
    """Decode a downloaded file as a distribution; errors name the Hub reference, not the cache path."""
    data = Path(path).read_bytes()
    try:
        return decode(data, where=ref)
    except FormatError as exc:
        hint = ""
        if not ref.endswith((".polar", ".polar.json", ".json", ".safetensors")):
            hint = " (an hf:// distribution reference should point to a .polar or .polar.safetensors file)"
        raise FormatError(f"{exc}; the file downloaded from the Hub is not a valid .polar distribution{hint}") from None


def pull(
    ref: str,
    *,
    endpoint: str | None = None,
    token: str | None = None,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> Distribution:
    """Download `hf://owner/repo[@rev]/file.polar` (either encoding) and return the validated distribution."""
    path = download(ref, endpoint=endpoint, token=token, revision=revision, cache_dir=cache_dir)
    return read_downloaded(path, ref)


# -- push ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PushResult:
    """What `push` did: `changed` is False when the repository already held exactly these files
    (then no commit was made and `commit_url` points at the existing head commit)."""

    repo_id: str
    commit_url: str | None
    changed: bool
    files: list[str] = field(default_factory=list)
    revision: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_STEM_SUFFIXES = (".polar.safetensors", ".polar.json", ".polar", ".safetensors", ".json")


def _stem_of(name: str) -> str:
    for suffix in _STEM_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return Path(name).stem or "distribution"


def _resolve_push_input(dist_or_path: Any, stem: str | None) -> tuple[Distribution, str, str]:
    """(distribution, file stem, description of where it came from). Reads, never writes."""
    if isinstance(dist_or_path, Distribution):
        return dist_or_path, stem or "distribution", "a Distribution object"
    text = os.fspath(dist_or_path)
    from .presets import get_preset, is_preset

    if is_preset(text) and not Path(text).exists():
        return get_preset(text).distribution, stem or text.split(":", 1)[1], text
    if is_hub_reference(text):
        raise HubError(f"{text} is already on the Hub; pull it to a file first (polarpack pull {text} --out FILE)")
    path = Path(text)
    return load_file(path), stem or _stem_of(path.name), str(path)


def _check_stem(stem: str) -> str:
    if not stem or "/" in stem or "\\" in stem or stem.startswith(".") or stem in {"README", "readme"}:
        raise HubError(f"cannot use {stem!r} as the file name on the Hub; pick a plain name such as 'mnv2'")
    return stem


def base_model_of(source: Mapping[str, Any]) -> str | None:
    """The Hub model a distribution was extracted from, if its `source` records one.

    Understands what `polarpack.sources` writes (`{"type": "hub", "id": "owner/repo/file",
    "hub": "hf://owner/repo/file"}`), a plain `repo_id`, and any `hf://` reference to a model
    repository under the usual keys. Dataset/space references give None.
    """
    if not isinstance(source, Mapping):
        return None
    from huggingface_hub.errors import HfUriError
    from huggingface_hub.utils import parse_hf_uri

    is_hub = str(source.get("type", "")).lower() in {"hub", "hf", "huggingface"}
    for key in ("hub", "ref", "uri", "repo_id", "repo", "model_id", "id", "path", "file", "model", "url", "weights"):
        value = source.get(key)
        if not isinstance(value, str) or not value:
            continue
        if not is_hub_reference(value):
            if not (is_hub and key in {"hub", "ref", "uri", "repo_id", "repo", "model_id", "id"} and "/" in value):
                continue
            value = HF_PREFIX + value  # the source type says it is a Hub path: owner/repo[/file]
        try:
            uri = parse_hf_uri(value)
        except HfUriError:
            continue
        return uri.id if uri.type == "model" else None
    return None


def _md(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _fmt_bytes(n: int | None) -> str:
    return "unknown" if n is None else f"{n:,}"


def _hf_uri(repo_id: str, revision: str | None, filename: str) -> str:
    rev = f"@{revision}" if revision not in (None, "main") else ""
    return f"{HF_PREFIX}{repo_id}{rev}/{filename}"


def build_card(
    dist: Distribution,
    *,
    repo_id: str,
    stem: str,
    revision: str | None = None,
    license: str | None = "mit",
    json_bytes: int | None = None,
    safetensors_bytes: int | None = None,
):
    """The model card (`huggingface_hub.ModelCard`) uploaded as README.md next to the distribution.

    Metadata: library_name polarpack, tags, license, base_model when the source is a Hub model.
    Body: per-layer table, the source and its sha256, the size comparison, usage. Deterministic:
    the same distribution and repository give the same bytes (so re-pushing changes nothing).
    """
    from huggingface_hub import ModelCard, ModelCardData

    base_model = base_model_of(dist.source)
    data = ModelCardData(
        library_name="polarpack",
        license=license or None,
        tags=list(CARD_TAGS),
        base_model=base_model,
    )
    polar_name, st_name = f"{stem}.polar", f"{stem}.polar.safetensors"
    json_bytes = len(encode_json(dist)) if json_bytes is None else json_bytes
    sizes = size_report(dist, polar_bytes=json_bytes)
    uri = _hf_uri(repo_id, revision, polar_name)

    lines = [
        f"# {stem}: a polarity distribution",
        "",
        f"The per-layer fractions of zero, negative and positive weights of a network ({len(dist)} layers, "
        f"{2 * len(dist)} free numbers), in the [polarpack](https://pypi.org/project/polarpack/) `.polar` "
        f"format. {PAPER} report that a new network initialised with Glorot magnitudes and a random sign "
        "pattern with these fractions, signs held fixed during training, reaches accuracy comparable to "
        "transferring the full pretrained weights.",
        "",
        "## Files",
        "",
        "| file | encoding | bytes |",
        "| --- | --- | ---: |",
        f"| `{polar_name}` | JSON | {_fmt_bytes(json_bytes)} |",
        f"| `{st_name}` | safetensors | {_fmt_bytes(safetensors_bytes)} |",
        "",
        "Both files hold the same distribution; polarpack reads either.",
        "",
        "## Source",
        "",
    ]
    source = dict(dist.source)
    if source:
        for key in sorted(source):
            if key == "sha256":
                continue
            value = source[key]
            shown = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
            lines.append(f"- {key}: `{_md(shown)}`")
    else:
        lines.append("- not recorded")
    sha = source.get("sha256")
    lines.append(f"- sha256 of the source weights: `{sha}`" if sha else "- sha256 of the source weights: not recorded")
    if base_model:
        lines.append(f"- base model: [{base_model}](https://huggingface.co/{base_model})")
    if dist.extraction:
        lines.append(f"- extraction settings: `{_md(json.dumps(dict(dist.extraction), sort_keys=True))}`")
    producer = dict(dist.producer)
    if producer:
        lines.append(f"- produced by: `{_md(' '.join(str(producer[k]) for k in sorted(producer)))}`")
    lines += [
        "",
        "## Layers",
        "",
        "| # | layer | kind | shape | weights | p0 (zero) | p- (negative) | p+ (positive) |",
        "| ---: | --- | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for i, layer in enumerate(dist.layers):
        shape = "x".join(str(s) for s in layer.shape) if layer.shape else "unknown"
        lines.append(
            f"| {i} | `{_md(layer.name)}` | {layer.kind} | {shape} | {_fmt_bytes(layer.numel)} | "
            f"{layer.p0:.6g} | {layer.p_neg:.6g} | {layer.p_pos:.6g} |"
        )
    lines += [
        "",
        "## Size",
        "",
        "| what | bytes |",
        "| --- | ---: |",
        f"| this `.polar` file | {_fmt_bytes(sizes['polar_bytes'])} |",
        f"| the full sign pattern (2 bits per weight) | {_fmt_bytes(sizes['sign_pattern_bytes'])} |",
        f"| the float32 weights | {_fmt_bytes(sizes['float32_bytes'])} |",
        "",
    ]
    if sizes["float32_bytes"] and sizes["polar_bytes"]:
        ratio = sizes["float32_bytes"] / sizes["polar_bytes"]
        lines += [f"The `.polar` file is {ratio:,.0f}x smaller than the float32 weights it summarises.", ""]
    else:
        lines += ["Layer shapes are not recorded, so the weight count is unknown.", ""]
    if dist.metadata:
        lines += [
            "## Metadata",
            "",
            "```json",
            json.dumps(dict(dist.metadata), indent=2, sort_keys=True, ensure_ascii=False),
            "```",
            "",
        ]
    lines += [
        "## Usage",
        "",
        "```bash",
        "pip install polarpack",
        f"polarpack inspect {uri}",
        f"polarpack train --dist {uri}",
        f"polarpack pull {uri} --out {polar_name}",
        "```",
        "",
        "```python",
        "from polarpack.hub import pull",
        "",
        f'dist = pull("{uri}")',
        "print(dist.names, dist.proportions())",
        "```",
        "",
    ]
    content = f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines)
    return ModelCard(content)


def push(
    dist_or_path: Distribution | str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    token: str | None = None,
    endpoint: str | None = None,
    message: str | None = None,
    license: str | None = "mit",
    stem: str | None = None,
) -> PushResult:
    """Publish a distribution to a Hub model repository in one commit.

    Uploads `<stem>.polar` (JSON), `<stem>.polar.safetensors` and a generated `README.md` model
    card; creates the repository (private if asked) and the branch `revision` when missing.
    `dist_or_path` is a Distribution, a .polar/.polar.safetensors file (read only, never written)
    or a `paper:` preset; `stem` defaults to the file name without its suffixes. Pushing content
    the repository already has makes no commit and returns `changed=False`.
    """
    dist, stem, origin = _resolve_push_input(dist_or_path, stem)
    stem = _check_stem(stem)
    endpoint = _resolve_endpoint(endpoint)
    action = f"cannot push {origin} to {repo_id}"
    from huggingface_hub.utils import validate_repo_id
    from huggingface_hub.errors import HFValidationError

    try:
        validate_repo_id(repo_id)
        if repo_id.count("/") != 1:
            raise HFValidationError(f"{repo_id!r} has no owner")
    except HFValidationError as exc:
        reason = _one_line(exc).rstrip(". ")
        raise HubError(
            f"{action}: invalid repo id ({reason}); use owner/name, your user or organization and a repository name"
        ) from None
    if is_offline():
        raise HubError(f"{action}: offline mode is on (HF_HUB_OFFLINE); unset HF_HUB_OFFLINE to publish")

    json_data, st_data = encode_json(dist), encode_safetensors(dist)
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    api = HfApi(endpoint=endpoint, token=token or None, library_name="polarpack", library_version=__version__)
    branch = revision if revision not in (None, "main") else None
    try:
        # Look before creating: create_repo's fallback for tokens that may not create repos builds
        # its RepoUrl without the custom endpoint and fails on one (huggingface_hub 2.4).
        try:
            head_before = api.repo_info(repo_id).sha
        except RepositoryNotFoundError as exc:
            if isinstance(exc, GatedRepoError):
                raise
            api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
            head_before = api.repo_info(repo_id).sha
        if branch is not None:
            if not branch.startswith("refs/"):
                api.create_branch(repo_id, branch=branch, exist_ok=True)
            head_before = api.repo_info(repo_id, revision=branch).sha
        card = build_card(
            dist,
            repo_id=repo_id,
            stem=stem,
            revision=revision,
            license=license,
            json_bytes=len(json_data),
            safetensors_bytes=len(st_data),
        )
        files = {
            f"{stem}.polar": json_data,
            f"{stem}.polar.safetensors": st_data,
            "README.md": str(card).encode("utf-8"),
        }
        operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=data) for name, data in files.items()]
        info = api.create_commit(
            repo_id,
            operations,
            commit_message=message or f"Upload {stem}.polar with polarpack {__version__}",
            revision=revision,
        )
    except HubError:
        raise
    except Exception as exc:
        error = _translate(exc, action=action, repo_id=repo_id, endpoint=endpoint, revision=revision, write=True)
        if error is None:
            raise
        raise error from exc
    # huggingface_hub drops files whose remote git oid equals the local one and, when nothing is
    # left, makes no commit and returns the current head: so an unchanged head means no change.
    changed = info.oid != head_before
    return PushResult(
        repo_id=repo_id,
        commit_url=str(info.commit_url) if info.commit_url else None,
        changed=changed,
        files=list(files),
        revision=revision,
    )
