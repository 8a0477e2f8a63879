"""polarpack.hub and `polarpack push/pull` against a fake Hub on 127.0.0.1 (tests/hub_server.py).

The real huggingface_hub client talks real HTTP to the fake server through the `endpoint`
argument; no client function is patched. Only huggingface_hub *constants* are set, to isolate the
cache and token paths and keep the client off huggingface.co (see `hub_env`); time limits are
shortened through POLARPACK_HUB_TIMEOUT. The last sections make the server hostile or broken
(`FakeHub.misbehave`): names that would step out of the cache, lying sizes, endless or dripping
bodies, answers that never come.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import traceback

import pytest
import torch
from click.testing import CliRunner
from hub_server import FakeHub, SilentEndpoint, git_blob_sha1
from huggingface_hub import HfApi, ModelCard, hf_hub_download, try_to_load_from_cache
from huggingface_hub import constants as hf_constants
from huggingface_hub.utils import _http as hf_http
from polarpack_cli.hub import pull as pull_cmd
from polarpack_cli.hub import push as push_cmd
from polarpack_cli.main import cli
from safetensors.torch import save_file

import polarpack.sources.hub as hub_source
from polarpack import extract
from polarpack import format as fmt
from polarpack.errors import FormatError, HubError
from polarpack.format import Distribution, LayerDistribution
from polarpack.hub import (
    HubReference,
    download,
    is_hub_reference,
    parse_reference,
    pull,
    pull_file,
    push,
)
from polarpack.sources.hub import ANSWER_LIMIT

TOKEN = "hf_fake_write_token"
REPO = "owner/dists"
SOURCE_SHA = "ab" * 32
FORM = "hf://owner/repo[@revision]/path/to/file.polar"
LIMIT = 1  # seconds: POLARPACK_HUB_TIMEOUT in the tests of time limits
HANG = 20  # seconds: a call still running after this is hung (loose, so load cannot fail a test)
REF = f"hf://{REPO}/mnv2.polar"


def make_dist(**source) -> Distribution:
    layers = (
        LayerDistribution.from_counts("features.0", [2, 50, 48], kind="conv", shape=[4, 1, 5, 5]),
        LayerDistribution.from_counts("classifier.1", [0, 41, 39], kind="linear", shape=[10, 8]),
    )
    hub_source = {  # as polarpack.sources.weights records an hf:// weights file
        "type": "hub",
        "id": "timm/resnet18.a1_in1k/model.safetensors",
        "hub": "hf://timm/resnet18.a1_in1k/model.safetensors",
        "sha256": SOURCE_SHA,
    }
    return Distribution(layers=layers, source=source or hub_source, extraction={"zero_tol": 0.0})


@pytest.fixture
def published(hub):
    """A repository holding one distribution in both encodings."""
    hub.add_repo(
        REPO,
        {
            "mnv2.polar": fmt.encode(make_dist(), "json"),
            "mnv2.polar.safetensors": fmt.encode(make_dist(), "safetensors"),
        },
    )
    return hub


@pytest.fixture(autouse=True)
def default_time_limit(monkeypatch):
    monkeypatch.delenv("POLARPACK_HUB_TIMEOUT", raising=False)


@pytest.fixture
def time_limit(monkeypatch):
    """Every Hub call must end within LIMIT seconds."""
    monkeypatch.setenv("POLARPACK_HUB_TIMEOUT", str(LIMIT))


@pytest.fixture
def silent(hub_env, time_limit):
    with SilentEndpoint() as endpoint:
        yield endpoint


@pytest.fixture
def polar_file(tmp_path):
    path = tmp_path / "mnv2.polar"
    fmt.save(make_dist(), path)
    return path


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text, text
    return text


def cache_files(hub_env) -> list[str]:
    """Every file and link in the cache (folders left empty are not files)."""
    cache = hub_env / "hf_cache"
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*") if not p.is_dir())


def raised_within(seconds: float, fn, *args, **kwargs) -> BaseException:
    """Run fn in a thread; the exception it raised, failing the test if it takes longer than
    `seconds`."""
    outcome: list = []

    def target():
        try:
            outcome.append(fn(*args, **kwargs))
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert outcome, f"{fn.__name__} still running after {seconds} s"
    assert isinstance(outcome[0], BaseException), outcome[0]
    return outcome[0]


# -- references ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ref, expected",
    [
        ("hf://owner/repo/file.polar", HubReference("owner/repo", None, "file.polar")),
        (
            "hf://owner/repo@v1/sub/dir/file.polar",
            HubReference("owner/repo", "v1", "sub/dir/file.polar"),
        ),
        (
            "hf://owner/repo@refs/pr/3/file.polar",
            HubReference("owner/repo", "refs/pr/3", "file.polar"),
        ),
        (
            "hf://datasets/owner/repo/d.polar",
            HubReference("owner/repo", None, "d.polar", "dataset"),
        ),
    ],
)
def test_parse_reference(ref, expected):
    assert is_hub_reference(ref)
    assert parse_reference(ref) == expected


@pytest.mark.parametrize(
    "ref",
    [
        "hf://",
        "hf://owner",
        "hf://owner/repo",
        "hf://owner/repo/",
        "hf://owner/repo@/f.polar",
        "hf://a b/c/f",
        "owner/repo/f",
        "hf://buckets/owner/b/f.polar",
        "hf://owner/repo/../x.polar",
        "hf://owner/repo/sub/../../x.polar",
        "hf://owner/repo/./x.polar",
        "hf://owner/repo@../x.polar",
        "hf://owner/repo@refs/../../x/f.polar",
        "hf://owner/repo/..\\..\\x.polar",
        "hf://owner/repo/x\x1b[2J.polar",
    ],
)
def test_parse_reference_refuses(ref):
    with pytest.raises(HubError) as err:
        parse_reference(ref)
    assert FORM in one_line(err.value)


@pytest.mark.parametrize("value", [None, "paper:alexnet", "owner/repo/f.polar", b"hf://o/r/f"])
def test_is_hub_reference_false(value):
    assert not is_hub_reference(value)


@pytest.mark.parametrize(
    "ref, revision",
    [("hf://owner/dists/../dists/mnv2.polar", None), ("hf://owner/dists/mnv2.polar", "../main")],
)
def test_dot_dot_is_refused_before_any_request(published, ref, revision):
    with pytest.raises(HubError, match=r"'\.\.' path segments are not allowed") as err:
        pull(ref, revision=revision, endpoint=published.url)
    one_line(err.value)
    assert published.requests == []


# -- push ----------------------------------------------------------------------------------


def test_push_makes_one_commit_with_three_files(hub, polar_file, polar_schema_validator):
    result = push(polar_file, REPO, token=TOKEN, endpoint=hub.url)
    assert result.changed and result.repo_id == REPO and result.revision is None
    assert result.files == ["mnv2.polar", "mnv2.polar.safetensors", "README.md"]
    assert result.commit_url == f"{hub.url}/{REPO}/commit/{hub.head(REPO)}"
    remote = hub.files(REPO)
    assert remote["mnv2.polar"] == polar_file.read_bytes()
    assert remote["mnv2.polar.safetensors"] == fmt.encode(fmt.load(polar_file), "safetensors")
    polar_schema_validator.validate(json.loads(remote["mnv2.polar"]))
    assert len(hub.calls("POST", r"/commit/")) == 1


def test_a_fault_in_polarpack_itself_is_not_reported_as_the_network(hub, polar_file, monkeypatch):
    """Only the network's and the Hub's failures become a one-line HubError; a programming error
    keeps its traceback instead of "no usable answer ... check the connection"."""
    import polarpack.hub.publish as publish

    async def broken(self, client):
        raise AttributeError("a fault in the code")

    monkeypatch.setattr(publish._Push, "commit", broken)
    with pytest.raises(AttributeError, match="a fault in the code"):
        push(polar_file, REPO, token=TOKEN, endpoint=hub.url)
    assert not hub.calls("POST", r"/commit/")


def test_model_card(hub, polar_file):
    push(polar_file, REPO, token=TOKEN, endpoint=hub.url)
    card = ModelCard(hub.files(REPO)["README.md"].decode())
    assert card.data.library_name == "polarpack" and card.data.license == "mit"
    assert {"polarpack", "polarity-distribution"} <= set(card.data.tags)
    assert card.data.base_model == "timm/resnet18.a1_in1k"
    expected = [
        "| `features.0` | conv | 4x1x5x5 | 100 | 0.02 | 0.5 | 0.48 |",
        SOURCE_SHA,
        f"polarpack train --dist hf://{REPO}/mnv2.polar",
        f"polarpack inspect hf://{REPO}/mnv2.polar",
        f"| `mnv2.polar` | {len(polar_file.read_bytes()):,} |",
        "| the float32 weights | 720 |",
    ]
    assert [line for line in expected if line not in card.text] == []


def test_model_card_without_a_hub_source(hub):
    result = push("paper:alexnet", REPO, token=TOKEN, endpoint=hub.url, license="apache-2.0")
    card = ModelCard(hub.files(REPO)["README.md"].decode())
    assert result.files[0] == "alexnet.polar"
    assert card.data.base_model is None and card.data.license == "apache-2.0"
    assert "- sha256: `not recorded`" in card.text


def test_a_pattern_distribution_is_pushed_as_safetensors_only(hub):
    signs = [[1, -1, 0, 1], [0, 0, -1, 1]]
    dist = Distribution(
        layers=(LayerDistribution.from_signs("conv1", signs, granularity="pattern"),),
        granularity="pattern",
    )
    result = push(dist, REPO, token=TOKEN, endpoint=hub.url, stem="signs")
    assert result.files == ["signs.polar.safetensors", "README.md"]
    assert pull(f"hf://{REPO}/signs.polar.safetensors", endpoint=hub.url) == dist


def test_second_push_of_same_content_is_unchanged(hub, polar_file):
    first = push(polar_file, REPO, token=TOKEN, endpoint=hub.url)
    commits = hub.n_commits(REPO)
    second = push(polar_file, REPO, token=TOKEN, endpoint=hub.url)
    assert not second.changed and second.commit_url == first.commit_url
    assert hub.n_commits(REPO) == commits


def test_push_of_new_content_under_the_same_name_commits(hub, polar_file):
    push(polar_file, REPO, token=TOKEN, endpoint=hub.url)
    fmt.save(make_dist(type="file", id="other.pth"), polar_file)
    assert push(polar_file, REPO, token=TOKEN, endpoint=hub.url).changed
    assert hub.files(REPO)["mnv2.polar"] == polar_file.read_bytes()


@pytest.mark.parametrize(
    "status, needles",
    [(500, ("HTTP 500", "try again")), (401, ("--token", "HF_TOKEN", "write access"))],
)
def test_failed_commit_leaves_local_file_and_retry_works(hub, polar_file, status, needles):
    before, mtime = polar_file.read_bytes(), polar_file.stat().st_mtime_ns
    hub.fail(r"/api/models/owner/dists/commit/", status=status)
    with pytest.raises(HubError) as err:
        push(polar_file, REPO, token=TOKEN, endpoint=hub.url)
    message = one_line(err.value)
    assert message.startswith(f"cannot push {polar_file} to {REPO}: ")
    assert [needle for needle in needles if needle not in message] == []
    assert polar_file.read_bytes() == before and polar_file.stat().st_mtime_ns == mtime
    assert sorted(p.name for p in polar_file.parent.iterdir()) == ["mnv2.polar"]  # no temp files
    assert set(hub.files(REPO)) == {".gitattributes"}  # nothing half-committed
    assert push(polar_file, REPO, token=TOKEN, endpoint=hub.url).changed
    assert hub.files(REPO)["mnv2.polar"] == before


@pytest.mark.parametrize(
    "exists, token, needle",
    [
        (False, None, "authentication required"),
        (True, None, "authentication required"),
        (True, "hf_wrong", "token rejected"),
    ],
)
def test_push_auth_errors_say_how_to_authenticate(hub, polar_file, exists, token, needle):
    if exists:
        hub.add_repo(REPO)
    with pytest.raises(HubError) as err:
        push(polar_file, REPO, endpoint=hub.url, token=token)
    message = one_line(err.value)
    assert (
        needle in message
        and "--token" in message
        and "hf auth login" in message
        and "write access" in message
    )


def test_push_to_a_branch(hub, polar_file):
    result = push(polar_file, REPO, revision="v1", token=TOKEN, endpoint=hub.url)
    assert result.revision == "v1" and result.changed
    assert "mnv2.polar" in hub.files(REPO, "v1") and "mnv2.polar" not in hub.files(REPO, "main")
    assert f"hf://{REPO}@v1/mnv2.polar" in hub.files(REPO, "v1")["README.md"].decode()


@pytest.mark.parametrize(
    "source, repo_id, error, match",
    [
        ("paper:alexnet", "not a repo", HubError, "owner/name"),
        ("paper:alexnet", "justaname", HubError, "owner/name"),
        ("missing.polar", REPO, FormatError, "no such file"),
        (f"hf://{REPO}/mnv2.polar", REPO, HubError, "already on the Hub"),
    ],
)
def test_push_rejects_bad_input_before_any_request(
    hub, tmp_path, monkeypatch, source, repo_id, error, match
):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(error, match=match) as err:
        push(source, repo_id, token=TOKEN, endpoint=hub.url)
    one_line(err.value)
    assert hub.requests == []


# -- pull / download -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mnv2.polar", "mnv2.polar.safetensors"])
def test_pull_each_encoding_through_the_cache(published, name):
    path = download(f"hf://{REPO}/{name}", endpoint=published.url)
    assert path.read_bytes() == published.files(REPO)[name]
    assert str(path).startswith(hf_constants.HF_HUB_CACHE)
    assert path.resolve().name == git_blob_sha1(
        path.read_bytes()
    )  # blobs are stored under their ETag
    assert pull(f"hf://{REPO}/{name}", endpoint=published.url) == make_dist()


@pytest.mark.parametrize(
    "ref, revision", [(f"hf://{REPO}@v1/mnv2.polar", None), (f"hf://{REPO}/mnv2.polar", "v1")]
)
def test_pull_from_a_branch(hub, polar_file, ref, revision):
    push(polar_file, REPO, revision="v1", token=TOKEN, endpoint=hub.url)
    assert pull(ref, revision=revision, endpoint=hub.url) == fmt.load(polar_file)


def test_two_different_revisions_are_an_error(published):
    with pytest.raises(HubError, match="drop one"):
        download(f"hf://{REPO}@v1/mnv2.polar", endpoint=published.url, revision="v2")


@pytest.mark.parametrize(
    "ref, token, needles",
    [
        (
            "hf://ghost/nothing/x.polar",
            None,
            ("repository ghost/nothing not found", "--token", "private"),
        ),
        ("hf://ghost/nothing/x.polar", TOKEN, ("repository ghost/nothing not found",)),
        (
            "hf://owner/dists/nope.polar",
            None,
            ("file 'nope.polar' not found in owner/dists", "/owner/dists/tree/main"),
        ),
        ("hf://owner/dists@v9/mnv2.polar", None, ("revision 'v9' not found in owner/dists",)),
    ],
)
def test_pull_errors_are_one_line(published, ref, token, needles):
    with pytest.raises(HubError) as err:
        pull(ref, endpoint=published.url, token=token)
    message = one_line(err.value)
    assert message.startswith(f"cannot download {ref}: ")
    assert [needle for needle in needles if needle not in message] == []


def test_private_repo_without_a_token_says_how_to_authenticate(hub):
    hub.add_repo(REPO, {"mnv2.polar": fmt.encode(make_dist(), "json")}, private=True)
    with pytest.raises(HubError) as err:
        pull(f"hf://{REPO}/mnv2.polar", endpoint=hub.url)
    message = one_line(err.value)
    assert (
        "private" in message
        and "--token" in message
        and "HF_TOKEN" in message
        and "hf auth login" in message
    )


def test_private_repo_with_a_token(hub):
    hub.add_repo(REPO, {"mnv2.polar": fmt.encode(make_dist(), "json")}, private=True)
    assert pull(f"hf://{REPO}/mnv2.polar", endpoint=hub.url, token=TOKEN) == make_dist()


@pytest.mark.parametrize("token", [None, TOKEN])
def test_gated_repo_says_to_accept_and_authenticate(hub, token):
    hub.add_repo(REPO, {"mnv2.polar": fmt.encode(make_dist(), "json")}, gated=True)
    with pytest.raises(HubError) as err:
        pull(f"hf://{REPO}/mnv2.polar", endpoint=hub.url, token=token)
    message = one_line(err.value)
    assert "is gated: accept its conditions" in message and "HF_TOKEN" in message


def test_gated_repo_serves_an_approved_user(hub):
    hub.add_repo(
        REPO, {"mnv2.polar": fmt.encode(make_dist(), "json")}, gated=True, approved={"tester"}
    )
    assert pull(f"hf://{REPO}/mnv2.polar", endpoint=hub.url, token=TOKEN) == make_dist()


@pytest.mark.parametrize(
    "name, content",
    [
        ("bad.polar", b'{"format_version": 1, "layers": []}\n'),
        ("bad.polar", b"garbage"),
        ("bad.polar.safetensors", b"\x08\x00\x00\x00\x00\x00\x00\x00{}      "),
        ("notes.txt", b"hello"),
    ],
)
def test_a_bad_file_is_named_by_its_reference(hub, name, content):
    hub.add_repo(REPO, {name: content})
    with pytest.raises(FormatError) as err:
        pull(f"hf://{REPO}/{name}", endpoint=hub.url)
    message = one_line(err.value)
    assert message.startswith(f"hf://{REPO}/{name}") and hf_constants.HF_HUB_CACHE not in message


def test_an_oversized_file_is_refused_before_download(published, monkeypatch):
    monkeypatch.setenv("POLARPACK_MAX_POLAR_BYTES", "100")
    with pytest.raises(HubError) as err:
        pull(f"hf://{REPO}/mnv2.polar", endpoint=published.url)
    message = one_line(err.value)
    assert f"reports {len(published.files(REPO)['mnv2.polar']):,} bytes" in message
    assert "100-byte limit" in message and "POLARPACK_MAX_POLAR_BYTES" in message
    assert published.calls("HEAD", r"/resolve/") and published.calls("GET", r"/resolve/") == []


def test_an_oversized_cached_file_is_refused_offline(published, monkeypatch):
    download(f"hf://{REPO}/mnv2.polar", endpoint=published.url)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("POLARPACK_MAX_POLAR_BYTES", "100")
    with pytest.raises(HubError, match="100-byte limit"):
        pull(f"hf://{REPO}/mnv2.polar", endpoint=published.url)


def test_pull_recovers_from_a_transient_server_error(published):
    published.fail(r"/resolve/", status=503, times=1, method="HEAD")
    assert pull(f"hf://{REPO}/mnv2.polar", endpoint=published.url) == make_dist()
    assert [status for _, _, status in published.calls("HEAD", r"/resolve/")][:2] == [503, 200]


def test_offline_with_a_warm_cache_makes_no_request(published, monkeypatch):
    online = download(f"hf://{REPO}/mnv2.polar", endpoint=published.url)
    seen = len(published.requests)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    assert download(f"hf://{REPO}/mnv2.polar", endpoint=published.url) == online
    assert pull(f"hf://{REPO}/mnv2.polar", endpoint=published.url) == make_dist()
    assert len(published.requests) == seen


def test_offline_with_a_cold_cache_is_clear(published, monkeypatch):
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(HubError) as err:
        pull(f"hf://{REPO}/mnv2.polar", endpoint=published.url)
    message = one_line(err.value)
    assert "offline mode is on (HF_HUB_OFFLINE)" in message and "unset HF_HUB_OFFLINE" in message
    assert hf_constants.HF_HUB_CACHE in message and published.requests == []


def test_push_offline_is_refused_without_a_request(hub, polar_file, monkeypatch):
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(HubError, match=r"offline mode is on \(HF_HUB_OFFLINE\)"):
        push(polar_file, REPO, token=TOKEN, endpoint=hub.url)
    assert hub.requests == []


# -- an endpoint that never answers --------------------------------------------------------


def fails_in_time(fn, *args, **kwargs) -> str:
    """The one-line HubError of a call that must give up at the time limit: after LIMIT seconds,
    and not hung."""
    start = time.monotonic()
    error = raised_within(HANG, fn, *args, **kwargs)
    elapsed = time.monotonic() - start
    assert isinstance(error, HubError), repr(error)
    assert LIMIT * 0.9 <= elapsed < HANG, elapsed
    return one_line(error)


@pytest.mark.parametrize("fetch", [pull, download])
def test_a_silent_endpoint_fails_a_download_in_time(silent, fetch):
    message = fails_in_time(fetch, f"hf://{REPO}/mnv2.polar", endpoint=silent.url)
    assert f"no usable answer from {silent.url}" in message and "POLARPACK_HUB_TIMEOUT" in message
    assert silent.connections == 1


def test_a_silent_endpoint_fails_a_push_in_time(silent, polar_file):
    message = fails_in_time(push, polar_file, REPO, token=TOKEN, endpoint=silent.url)
    assert f"no usable answer from {silent.url} within the 1 s limit" in message
    assert "pushing again is safe" in message and silent.connections == 1


def test_a_silent_endpoint_falls_back_to_the_cache(published, silent):
    cached = download(f"hf://{REPO}/mnv2.polar", endpoint=published.url)
    assert download(f"hf://{REPO}/mnv2.polar", endpoint=silent.url) == cached


# -- CLI -----------------------------------------------------------------------------------


def test_cli_push_prints_the_commit_then_unchanged(hub, polar_file):
    runner = CliRunner()
    first = runner.invoke(
        push_cmd, [str(polar_file), REPO, "--endpoint", hub.url, "--token", TOKEN]
    )
    assert first.exit_code == 0, first.output
    assert first.stdout.strip() == f"{hub.url}/{REPO}/commit/{hub.head(REPO)}"
    assert f"polarpack inspect hf://{REPO}/mnv2.polar" in first.stderr
    again = runner.invoke(
        push_cmd, [str(polar_file), REPO, "--json"], env={"HF_TOKEN": TOKEN, "HF_ENDPOINT": hub.url}
    )
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["changed"] is False


@pytest.mark.parametrize(
    "out_name, json_encoded", [("copy.polar", True), ("copy.polar.safetensors", False)]
)
def test_cli_pull_writes_a_copy(published, tmp_path, out_name, json_encoded):
    out = tmp_path / out_name
    result = CliRunner().invoke(
        pull_cmd,
        [f"hf://{REPO}/mnv2.polar", "--out", str(out), "--json"],
        env={"HF_ENDPOINT": published.url},
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (
        report["path"] == str(out)
        and report["layers"] == 2
        and report["names"] == ["features.0", "classifier.1"]
    )
    assert fmt.load(out) == make_dist() and (out.read_bytes()[:1] == b"{") == json_encoded


@pytest.mark.parametrize(
    "args, needle",
    [
        (
            ["hf://ghost/nothing/x.polar"],
            "Error: cannot download hf://ghost/nothing/x.polar: repository",
        ),
        (["hf://owner/dists/../x.polar"], "'..' path segments are not allowed"),
        (["hf://owner/dists/mnv2.polar", "--out", "no/such/dir/x.polar"], "does not exist"),
    ],
)
def test_cli_pull_errors_are_one_line(published, args, needle):
    result = CliRunner().invoke(pull_cmd, [*args, "--endpoint", published.url])
    assert result.exit_code == 1 and result.stdout == "" and "Traceback" not in result.output
    assert needle in result.stderr and result.stderr.count("\n") == 1
    assert published.calls("GET", r"/resolve/") == []


def test_cli_push_server_error_is_one_line(hub, polar_file, cli_error):
    hub.fail(r"/commit/", status=500)
    error = cli_error(["push", str(polar_file), REPO, "--endpoint", hub.url, "--token", TOKEN])
    assert error.startswith(f"Error: cannot push {polar_file}") and "HTTP 500" in error


def test_main_cli_has_push_and_pull():
    assert {"push", "pull"} <= set(cli.commands)


def test_cli_inspect_reads_an_hf_reference(published):
    result = CliRunner().invoke(
        cli, ["inspect", f"hf://{REPO}/mnv2.polar", "--endpoint", published.url]
    )
    assert result.exit_code == 0, result.output
    assert "features.0" in result.output and "classifier.1" in result.output


# -- the cache is huggingface_hub's ----------------------------------------------------------


def test_a_download_leaves_the_huggingface_hub_cache_layout(published, hub_env):
    path = download(REF, endpoint=published.url)
    data, head = published.files(REPO)["mnv2.polar"], published.head(REPO)
    assert cache_files(hub_env) == [
        f"models--owner--dists/blobs/{git_blob_sha1(data)}",
        "models--owner--dists/refs/main",
        f"models--owner--dists/snapshots/{head}/mnv2.polar",
    ]  # and no temporary file
    assert path.is_symlink() and path.read_bytes() == data
    assert try_to_load_from_cache(REPO, "mnv2.polar") == str(path)
    assert hf_hub_download(REPO, "mnv2.polar", local_files_only=True) == str(path)


def test_a_file_huggingface_hub_downloaded_serves_offline(published, monkeypatch):
    cached = hf_hub_download(REPO, "mnv2.polar.safetensors", endpoint=published.url)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    assert str(download(f"hf://{REPO}/mnv2.polar.safetensors")) == cached
    assert pull(f"hf://{REPO}/mnv2.polar.safetensors") == make_dist()


def test_datasets_and_pull_request_revisions(hub, hub_env, monkeypatch):
    head = hub.add_repo(REPO, {"d.polar": fmt.encode(make_dist(), "json")}, repo_type="dataset")
    hub.repos[("dataset", REPO)].branches["refs/pr/1"] = head
    ref = f"hf://datasets/{REPO}@refs/pr/1/d.polar"
    assert pull(ref, endpoint=hub.url) == make_dist()
    assert "datasets--owner--dists/refs/refs/pr/1" in cache_files(hub_env)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    assert pull(ref, endpoint=hub.url) == make_dist()


@pytest.mark.parametrize(
    "revision", ["ma in", "a..b", "x:y", "main/", ".hidden", "v1.lock", "a@{1"]
)
def test_a_bad_revision_is_refused_before_any_request(published, revision):
    with pytest.raises(HubError, match="not a valid branch, tag or commit name") as err:
        pull(REF, revision=revision, endpoint=published.url)
    one_line(err.value)
    assert published.requests == []


@pytest.mark.parametrize("value", ["soon", "0", "-1", "nan", "inf"])
def test_a_bad_time_limit_is_refused_before_any_request(published, monkeypatch, value):
    monkeypatch.setenv("POLARPACK_HUB_TIMEOUT", value)
    with pytest.raises(HubError, match=r"\$POLARPACK_HUB_TIMEOUT must be a number of seconds"):
        pull(REF, endpoint=published.url)
    assert published.requests == []


# -- a hostile server: names that would step out of the cache --------------------------------

ESCAPE = "../../../escaped"  # from <cache>/models--owner--dists/blobs/ to the test's folder


@pytest.mark.parametrize(
    "headers, named",
    [
        ({"ETag": f'"{ESCAPE}"'}, "as the ETag"),
        ({"X-Linked-Etag": f'"{ESCAPE}"'}, "as the ETag"),
        ({"ETag": '"' + "ab" * 32 + '/x"'}, "as the ETag"),
        ({"X-Repo-Commit": ESCAPE}, "as X-Repo-Commit"),
        ({"X-Repo-Commit": None}, "nothing as X-Repo-Commit"),
        ({"X-Linked-Size": "-1"}, "as the file size"),
        ({"X-Linked-Size": "1e3"}, "as the file size"),
    ],
)
def test_server_names_are_checked_before_anything_is_written(published, hub_env, headers, named):
    published.misbehave(r"/resolve/", headers=headers, times=10)
    with pytest.raises(HubError) as err:
        download(REF, endpoint=published.url)
    message = one_line(err.value)
    assert message.startswith(f"cannot download {REF}: the server sent ") and named in message
    assert "nothing was written" in message and "HF_ENDPOINT" in message
    assert cache_files(hub_env) == [] and not (hub_env / "escaped").exists()
    assert published.calls("GET", r"/resolve/") == []


def test_another_commit_than_the_one_asked_for_is_refused(published, hub_env):
    head = published.head(REPO)
    published.misbehave(r"/resolve/", headers={"X-Repo-Commit": "0" * 40})
    with pytest.raises(HubError, match=f"which is not the commit asked for, {head}") as err:
        download(f"hf://{REPO}@{head}/mnv2.polar", endpoint=published.url)
    assert "nothing was written" in one_line(err.value) and cache_files(hub_env) == []


@pytest.mark.parametrize(
    "method, status, location, needle",
    [
        ("HEAD", 302, "file:///etc/passwd", "which is not an http(s) address"),
        ("GET", 302, "ftp://127.0.0.1/x", "which is not an http(s) address"),
        ("GET", 307, "http://[::1", f"cannot download {REF}: "),  # httpx may refuse it first
        ("HEAD", 302, None, "sent nothing as a redirect Location"),
        ("GET", 304, None, "sent nothing as a redirect Location"),
    ],
)
def test_a_redirect_is_checked(published, hub_env, method, status, location, needle):
    published.misbehave(r"/resolve/", method=method, status=status, headers={"Location": location})
    with pytest.raises(HubError) as err:
        download(REF, endpoint=published.url)
    assert needle in one_line(err.value) and cache_files(hub_env) == []


def test_endless_redirects_end(published, hub_env):
    here = f"/{REPO}/resolve/main/mnv2.polar"
    published.misbehave(
        r"/resolve/", method="HEAD", status=307, headers={"Location": here}, times=9
    )
    with pytest.raises(HubError, match="more than 5 redirects"):
        download(REF, endpoint=published.url)
    assert len(published.calls("HEAD", r"/resolve/")) == 6 and cache_files(hub_env) == []


def test_the_token_is_not_sent_where_the_hub_redirects(published, hub_env):
    """The Hub sends large files from another host (its CDN): that host gets no token."""
    data = published.files(REPO)["mnv2.polar"]
    with FakeHub() as cdn:
        cdn.add_repo(REPO, {"mnv2.polar": data})
        published.misbehave(
            r"/resolve/",
            method="HEAD",
            status=302,
            headers={"Location": f"{cdn.url}/{REPO}/resolve/main/mnv2.polar"},
        )
        assert download(REF, endpoint=published.url, token=TOKEN).read_bytes() == data
        assert cdn.calls("GET", r"/resolve/") and cdn.authorized == []
    assert published.authorized == [("HEAD", f"/{REPO}/resolve/main/mnv2.polar")]


def test_the_servers_warnings_are_not_printed(published, caplog):
    published.misbehave(r"/resolve/", status=404, headers={"X-HF-Warning": "x; \x1b[2Jfake"})
    with pytest.raises(HubError):
        download(REF, endpoint=published.url)
    assert "fake" not in caplog.text


# -- a broken or hostile server: sizes and contents ------------------------------------------

ENDLESS = 1 << 15  # chunks of 64 KiB: 2 GiB, made as they are sent
CHUNK = b"\0" * (1 << 16)


def test_a_body_longer_than_announced_is_cut_off(published, hub_env):
    """HEAD announces the real size; GET streams 2 GiB: reading stops after one chunk."""
    published.misbehave(r"/resolve/", method="GET", body=itertools.repeat(CHUNK, ENDLESS))
    start = time.monotonic()
    with pytest.raises(HubError) as err:
        pull(REF, endpoint=published.url)
    message = one_line(err.value)
    size = len(published.files(REPO)["mnv2.polar"])
    assert f"the server announced {size:,} bytes but sent more; stopped reading" in message
    assert "16,777,216 bytes, POLARPACK_MAX_POLAR_BYTES" in message
    assert time.monotonic() - start < HANG and published.streamed < 64 << 20
    assert cache_files(hub_env) == []


def test_a_body_of_unknown_size_stops_at_the_limit(published, hub_env, monkeypatch):
    monkeypatch.setenv("POLARPACK_MAX_POLAR_BYTES", "100000")
    published.misbehave(r"/resolve/", method="HEAD", headers={"Content-Length": None})
    published.misbehave(r"/resolve/", method="GET", body=itertools.repeat(CHUNK, ENDLESS))
    with pytest.raises(HubError) as err:
        pull(REF, endpoint=published.url)
    message = one_line(err.value)
    assert "more than the 100,000-byte limit for .polar files arrived; stopped reading" in message
    assert "POLARPACK_MAX_POLAR_BYTES" in message and published.streamed < 64 << 20
    assert cache_files(hub_env) == []


@pytest.mark.parametrize(
    "body, needle",
    [
        (lambda data: [data[:-1] + b"?"], "do not match the ETag"),
        (lambda data: [data[:100]], "the connection ended after 100 of"),
    ],
)
def test_a_wrong_or_short_body_is_not_kept(published, hub_env, body, needle):
    data = published.files(REPO)["mnv2.polar"]
    published.misbehave(r"/resolve/", method="GET", body=body(data))
    with pytest.raises(HubError, match=needle) as err:
        download(REF, endpoint=published.url)
    assert "kept nothing" in one_line(err.value) and cache_files(hub_env) == []
    assert download(REF, endpoint=published.url).read_bytes() == data  # the next try works


def test_ctrl_c_during_a_download_leaves_nothing(published, hub_env, ctrl_c):
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("SIGINT reaches the main thread only")
    published.misbehave(r"/resolve/", method="GET", body=itertools.repeat(b"x"), pace=0.05)
    interrupt = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT))
    interrupt.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            download(REF, endpoint=published.url)
    finally:  # a download that failed fast must not leave the signal to hit a later test
        interrupt.cancel()
    assert published.streamed > 0 and cache_files(hub_env) == []


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_command_stopped_by_a_signal_leaves_nothing(published, hub_env, signum):
    """`timeout`, a scheduler or a closed terminal stops `polarpack pull` as Ctrl-C does: the
    partial download is removed, and the exit status names the signal."""
    published.misbehave(r"/resolve/", method="GET", body=itertools.repeat(b"x"), pace=0.05)
    env = {**os.environ, "HF_HUB_CACHE": str(hub_env / "hf_cache"), "HF_HUB_OFFLINE": "0"}
    command = [sys.executable, "-m", "polarpack", "pull", REF, "--endpoint", published.url]
    with subprocess.Popen(command, env=env, stderr=subprocess.PIPE) as pull:
        deadline = time.monotonic() + 60
        while published.streamed == 0 and time.monotonic() < deadline and pull.poll() is None:
            time.sleep(0.05)
        if published.streamed == 0:  # never started: say why, without waiting for the limit
            pull.kill()
            pytest.fail(pull.stderr.read().decode())
        pull.send_signal(signum)
        assert pull.wait(timeout=60) == 128 + signum
    assert cache_files(hub_env) == []


def test_a_command_started_under_nohup_keeps_ignoring_sighup(published, hub_env):
    published.misbehave(r"/resolve/", method="GET", body=itertools.repeat(b"x"), pace=0.05)
    env = {**os.environ, "HF_HUB_CACHE": str(hub_env / "hf_cache"), "HF_HUB_OFFLINE": "0"}
    command = ["nohup", sys.executable, "-m", "polarpack", "pull", REF, "--endpoint", published.url]
    with subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL) as pull:
        deadline = time.monotonic() + 60
        while published.streamed == 0 and time.monotonic() < deadline and pull.poll() is None:
            time.sleep(0.05)
        assert published.streamed > 0
        pull.send_signal(signal.SIGHUP)
        time.sleep(1)
        assert pull.poll() is None  # still downloading
        pull.send_signal(signal.SIGTERM)
        assert pull.wait(timeout=60) == 128 + signal.SIGTERM


def test_a_connection_cut_mid_body_leaves_nothing(published, hub_env):
    data = published.files(REPO)["mnv2.polar"]
    published.misbehave(
        r"/resolve/",
        method="GET",
        headers={"Content-Length": str(len(data))},
        body=[data[:100]],
    )
    with pytest.raises(HubError, match=r"did not complete \(RemoteProtocolError\)") as err:
        download(REF, endpoint=published.url)
    one_line(err.value)
    assert cache_files(hub_env) == []


# -- a broken or hostile server: answers that are not files ----------------------------------

PUSH_ROUTES = {  # what push asks the Hub, and the path it asks at
    "a repository lookup": r"^/api/models/owner/dists$",
    "creating the repository": r"^/api/repos/create$",
    "creating the branch": r"/branch/",
    "the upload modes": r"/preupload/",
    "the LFS upload plan": r"\.git/info/lfs/objects/batch$",
    "the upload of alexnet.polar.safetensors": r"^/lfs-storage/",
    "the verification of alexnet.polar.safetensors": r"\.git/info/lfs/objects/verify$",
    "the commit": r"/commit/",
}


def push_asking(hub: FakeHub, what: str, **kwargs):
    """Push to REPO (created first unless `what` is its creation; on a branch for the branch)."""
    if what != "creating the repository":
        hub.add_repo(REPO)
    revision = "v1" if what == "creating the branch" else None
    return push("paper:alexnet", REPO, token=TOKEN, endpoint=hub.url, revision=revision, **kwargs)


@pytest.mark.parametrize("what", list(PUSH_ROUTES))
def test_an_endless_answer_fails_a_push_at_once(hub, what):
    """Every answer to a push is read within ANSWER_LIMIT: an endless one costs a few MB, not
    memory until the time limit."""
    hub.misbehave(PUSH_ROUTES[what], endless=True)
    error = raised_within(HANG, push_asking, hub, what, timeout=HANG)
    assert isinstance(error, HubError), repr(error)
    message = one_line(error)
    assert message.startswith(f"cannot push paper:alexnet to {REPO}: the answer from {hub.url}")
    assert f"to {what} went past {ANSWER_LIMIT:,} bytes" in message and "HF_ENDPOINT" in message
    assert hub.streamed < 64 << 20
    if what != "the commit":
        assert hub.calls("POST", r"/commit/") == []


@pytest.mark.parametrize("extra, passes", [(0, True), (1, False)])
def test_a_push_answer_at_the_limit_passes_one_byte_more_is_refused(hub, extra, passes):
    hub.misbehave(PUSH_ROUTES["a repository lookup"], pad_to=ANSWER_LIMIT + extra)
    if passes:
        assert push_asking(hub, "a repository lookup").changed
    else:
        with pytest.raises(HubError, match=f"went past {ANSWER_LIMIT:,} bytes"):
            push_asking(hub, "a repository lookup")
        assert hub.calls("POST", r"/commit/") == []


@pytest.mark.parametrize(
    "what, body, needle",
    [
        ("the commit", {"commitOid": "ab" * 20, "commitUrl": "javascript:x"}, "'javascript:x'"),
        ("the commit", {"commitOid": "../x", "commitUrl": "http://h/c"}, "'../x'"),
        ("a repository lookup", {"sha": "main"}, "'main', which is not a commit id"),
        ("the upload modes", {"files": []}, "which is not an upload mode for alexnet.polar"),
        ("the upload modes", {"files": 5}, "which is not an upload mode for alexnet.polar"),
        ("the LFS upload plan", {"objects": []}, "not a plan for alexnet.polar.safetensors"),
        ("the LFS upload plan", {"objects": 5}, "not a plan for alexnet.polar.safetensors"),
        ("creating the repository", "<html>", "'<html>', which is not JSON"),
        ("a repository lookup", "[" * 100_000, "which is not JSON"),  # deeper than Python recurses
        ("the upload modes", {"files": [{"path": ["x"]}]}, "not an upload mode for alexnet.polar"),
        ("the LFS upload plan", {"objects": [{"oid": {}}]}, "not a plan for alexnet.polar."),
    ],
)
def test_an_answer_no_hub_sends_is_named(hub, what, body, needle):
    data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    hub.misbehave(PUSH_ROUTES[what], body=[data])
    with pytest.raises(HubError) as err:
        push_asking(hub, what)
    message = one_line(err.value)
    assert f"{hub.url} answered {what} with " in message and needle in message
    assert "it is not a Hugging Face Hub or it is broken (check HF_ENDPOINT)" in message


def test_cli_push_against_an_endless_answer_is_one_line(hub, cli_error, polar_file):
    hub.misbehave(r"/commit/", endless=True)
    args = ["push", str(polar_file), REPO, "--endpoint", hub.url, "--token", TOKEN]
    start = time.monotonic()
    cli_error(args, f"Error: cannot push {polar_file}", f"went past {ANSWER_LIMIT:,} bytes")
    assert time.monotonic() - start < HANG and hub.streamed < 64 << 20


def test_cli_extract_of_an_endless_download_of_unannounced_size_stops(
    hub, tmp_path, cli_error, monkeypatch
):
    """Weights have no size limit of their own: a file of unannounced size stops at the
    ceiling, not at the time limit."""
    monkeypatch.setattr(hub_source, "UNANNOUNCED_LIMIT", 1 << 20)
    monkeypatch.setenv("POLARPACK_HUB_TIMEOUT", str(HANG))
    hub.add_repo("me/weights", {"model.safetensors": b"anything"})
    hub.misbehave(r"/resolve/", method="HEAD", headers={"Content-Length": None})
    hub.misbehave(r"/resolve/", method="GET", body=itertools.repeat(CHUNK, ENDLESS))
    ref = "hf://me/weights/model.safetensors"
    args = ["extract", ref, "--out", str(tmp_path / "w.polar"), "--endpoint", hub.url]
    start = time.monotonic()
    cli_error(args, f"Error: cannot download {ref}", "sent more than 1,048,576 bytes, the ceiling")
    assert time.monotonic() - start < HANG and hub.streamed < 64 << 20
    assert not (tmp_path / "w.polar").exists()


@pytest.mark.parametrize("extra, passes", [(0, True), (-1, False)])
def test_a_download_of_unannounced_size_at_the_ceiling_passes(
    published, hub_env, monkeypatch, extra, passes
):
    data = published.files(REPO)["mnv2.polar"]
    monkeypatch.setattr(hub_source, "UNANNOUNCED_LIMIT", len(data) + extra)
    published.misbehave(r"/resolve/", method="HEAD", headers={"Content-Length": None})
    if passes:
        assert download(REF, endpoint=published.url).read_bytes() == data
    else:
        with pytest.raises(HubError, match=f"more than {len(data) - 1:,} bytes, the ceiling"):
            download(REF, endpoint=published.url)
        assert cache_files(hub_env) == []


@pytest.mark.parametrize("announced", [True, False])
@pytest.mark.parametrize("extra, passes", [(0, True), (-1, False)])
def test_a_polar_file_at_the_limit_passes(published, monkeypatch, announced, extra, passes):
    """POLARPACK_MAX_POLAR_BYTES bounds the announced size and the bytes that arrive."""
    size = len(published.files(REPO)["mnv2.polar"])
    monkeypatch.setenv("POLARPACK_MAX_POLAR_BYTES", str(size + extra))
    if not announced:
        published.misbehave(r"/resolve/", method="HEAD", headers={"Content-Length": None})
    if passes:
        assert pull(REF, endpoint=published.url) == make_dist()
    else:
        with pytest.raises(HubError, match=f"{size - 1:,}-byte limit"):
            pull(REF, endpoint=published.url)


# -- Git LFS: the Hub wants every .safetensors file there ----------------------------------------

LFS_FILE = "mnv2.polar.safetensors"
BATCH = f"/{REPO}.git/info/lfs/objects/batch"
VERIFY = f"/{REPO}.git/info/lfs/objects/verify"


def test_a_push_whose_files_go_to_lfs_lands_and_pulls_back_equal(hub, polar_file):
    result = push(polar_file, REPO, token=TOKEN, endpoint=hub.url)
    assert result.changed and hub.lfs_files(REPO) == {LFS_FILE}
    assert hub.files(REPO)[LFS_FILE] == fmt.encode(fmt.load(polar_file), "safetensors")
    assert len(hub.calls("PUT", r"^/lfs-storage/")) == 1 and hub.calls("POST", VERIFY)
    assert len(hub.calls("POST", r"/commit/")) == 1
    assert pull(f"hf://{REPO}/{LFS_FILE}", endpoint=hub.url) == fmt.load(polar_file)
    assert pull(REF, endpoint=hub.url) == fmt.load(polar_file)
    # the token goes to the Hub only, never to the storage address the upload is sent to
    assert ("POST", BATCH) in hub.authorized and ("POST", VERIFY) in hub.authorized
    assert [path for method, path in hub.authorized if method == "PUT"] == []


def test_a_second_identical_push_uploads_nothing_and_makes_no_commit(hub, polar_file):
    first = push(polar_file, REPO, token=TOKEN, endpoint=hub.url)
    requests = len(hub.requests)
    second = push(polar_file, REPO, token=TOKEN, endpoint=hub.url)
    assert not second.changed and second.commit_url == first.commit_url
    asked = [(method, path) for method, path, _ in hub.requests[requests:]]
    assert [a for a in asked if a[0] == "PUT" or "/lfs/" in a[1] or "/commit/" in a[1]] == []


def test_bytes_the_hub_stores_already_are_not_sent_again(hub, polar_file):
    """Another name for the same bytes: the upload plan has nothing to do, the commit names them."""
    push(polar_file, REPO, token=TOKEN, endpoint=hub.url)
    assert push(polar_file, REPO, token=TOKEN, endpoint=hub.url, stem="copy").changed
    assert len(hub.calls("POST", BATCH)) == 2 and len(hub.calls("PUT", r"^/lfs-storage/")) == 1
    assert hub.files(REPO)["copy.polar.safetensors"] == hub.files(REPO)[LFS_FILE]
    assert hub.lfs_files(REPO) == {LFS_FILE, "copy.polar.safetensors"}


def plan_for(polar_file, **entry) -> bytes:
    """An upload plan answer for the push of `polar_file`, its one object given `entry`."""
    data = fmt.encode(fmt.load(polar_file), "safetensors")
    obj = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), **entry}
    return json.dumps({"objects": [obj]}).encode()


def upload(href: str, **header: str) -> dict:
    return {"actions": {"upload": {"href": href, "header": header}}}


@pytest.mark.parametrize(
    "entry, needle",
    [
        (
            {"error": {"code": 422, "message": "Object too large"}},
            f"refused to store {LFS_FILE} in Git LFS: Object too large (code 422)",
        ),
        (
            upload("file:///etc/passwd"),
            "which is not an http(s) upload address for mnv2.polar.safetensors",
        ),
        (
            {"actions": {"verify": {"href": "http://h/v"}}},
            "which is not an http(s) upload address for mnv2.polar.safetensors",
        ),
        (
            upload("http://h/u", chunk_size="5000000"),
            "in parts of 5000000 bytes (a multipart Git LFS upload), which polarpack does not make",
        ),
    ],
)
def test_an_upload_plan_polarpack_cannot_follow_is_one_line(hub, polar_file, entry, needle):
    hub.misbehave(BATCH, body=[plan_for(polar_file, **entry)])
    with pytest.raises(HubError) as err:
        push(polar_file, REPO, token=TOKEN, endpoint=hub.url)
    message = one_line(err.value)
    assert (
        message.startswith(f"cannot push {polar_file} to {REPO}: {hub.url} ") and needle in message
    )
    assert hub.calls("PUT", r"") == [] and hub.calls("POST", r"/commit/") == []


@pytest.mark.parametrize(
    "route, method, needle",
    [
        (r"^/lfs-storage/", "PUT", f"{{url}} answered the upload of {LFS_FILE} with HTTP 500 ("),
        (VERIFY, "POST", "{url} answered HTTP 500 (Injected failure (HTTP 500)); try again"),
    ],
)
def test_a_failed_upload_makes_no_commit_and_a_retry_lands(hub, polar_file, route, method, needle):
    hub.fail(route, status=500, method=method)
    with pytest.raises(HubError) as err:
        push(polar_file, REPO, token=TOKEN, endpoint=hub.url)
    assert needle.format(url=hub.url) in one_line(err.value)
    assert hub.calls("POST", r"/commit/") == [] and set(hub.files(REPO)) == {".gitattributes"}
    assert push(polar_file, REPO, token=TOKEN, endpoint=hub.url).changed
    assert pull(f"hf://{REPO}/{LFS_FILE}", endpoint=hub.url) == fmt.load(polar_file)


def test_an_upload_that_never_answers_ends_in_time(hub, polar_file, time_limit):
    hub.misbehave(r"^/lfs-storage/", method="PUT", stall=True)
    message = fails_in_time(push, polar_file, REPO, token=TOKEN, endpoint=hub.url)
    assert f"no usable answer from {hub.url} within the 1 s limit" in message
    assert hub.calls("POST", r"/commit/") == []


# -- a guest in its user's process ----------------------------------------------------------


def huggingface_hub_state() -> dict:
    """What a library could change for every user of huggingface_hub in the process."""
    loggers = [logging.getLogger()] + [
        logging.getLogger(name)
        for name in sorted(logging.root.manager.loggerDict)
        if name.split(".")[0] in ("huggingface_hub", "httpx", "httpx2", "httpcore", "httpcore2")
    ]
    session = hf_http.get_session()
    return {
        "hooks": {k: list(v) for k, v in session.event_hooks.items()},
        "client": session,
        "factories": (hf_http._GLOBAL_CLIENT_FACTORY, hf_http._GLOBAL_ASYNC_CLIENT_FACTORY),
        "loggers": [
            (log.name, log.level, list(log.filters), list(log.handlers), log.propagate)
            for log in loggers
        ],
    }


IMPORT_CHECK = """
import logging, torch, huggingface_hub
from huggingface_hub.utils import _http

NAMES = [""] + sorted(logging.root.manager.loggerDict)  # the loggers there before the import


def state():
    loggers = [logging.getLogger(name) for name in NAMES]
    return (
        {k: list(v) for k, v in _http.get_session().event_hooks.items()},
        _http._GLOBAL_CLIENT_FACTORY,
        _http._GLOBAL_ASYNC_CLIENT_FACTORY,
        [(g.level, g.filters[:], g.handlers[:], g.propagate, g.disabled) for g in loggers],
        torch.get_default_dtype(),
        torch.get_num_threads(),
        torch.is_grad_enabled(),
        torch.are_deterministic_algorithms_enabled(),
        torch.backends.cudnn.benchmark,
    )


before = state()
import polarpack, polarpack.hub, polarpack.sources.hub  # noqa: E401
assert state() == before, [(a, b) for a, b in zip(state(), before) if a != b]
"""


def test_importing_polarpack_changes_nothing_process_wide():
    """In a fresh interpreter: torch, huggingface_hub and logging as they were before the import."""
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_CHECK], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]


def test_push_and_pull_leave_huggingface_hub_as_they_found_it(hub, polar_file, caplog):
    before = huggingface_hub_state()
    push(polar_file, REPO, token=TOKEN, endpoint=hub.url)
    assert pull(REF, endpoint=hub.url) == fmt.load(polar_file)
    hub.misbehave(r"/commit/", stall=True)
    with pytest.raises(HubError, match="limit"):
        push(make_dist(), REPO, token=TOKEN, endpoint=hub.url, stem="other", timeout=LIMIT)
    assert huggingface_hub_state() == before
    # a plain huggingface_hub call afterwards: answered, and its log records are not filtered
    with caplog.at_level(logging.DEBUG, logger="huggingface_hub"):
        path = hf_hub_download(REPO, "mnv2.polar", endpoint=hub.url, force_download=True)
        info = HfApi(endpoint=hub.url).model_info(REPO)
    assert open(path, "rb").read() == polar_file.read_bytes() and info.sha == hub.head(REPO)
    assert any(r.name.startswith("huggingface_hub") for r in caplog.records)
    assert huggingface_hub_state() == before


# -- a slow or silent server: every call ends within POLARPACK_HUB_TIMEOUT --------------------


def test_a_dripping_download_ends_in_time(published, hub_env, time_limit):
    """One byte every 0.2 s: never silent long enough for a per-read timeout."""
    published.misbehave(r"/resolve/", method="GET", body=itertools.repeat(b"x"), pace=0.2)
    message = fails_in_time(pull, REF, endpoint=published.url)
    assert "the download did not complete (not done within the 1 s limit" in message
    assert "POLARPACK_HUB_TIMEOUT=<seconds>" in message and cache_files(hub_env) == []


def test_headers_dripping_end_in_time(published, hub_env, time_limit):
    published.misbehave(r"/resolve/", method="HEAD", slow_headers=True, pace=0.05)
    message = fails_in_time(pull, REF, endpoint=published.url)
    assert f"no usable answer from {published.url} (not done within the 1 s limit" in message
    assert cache_files(hub_env) == []


def test_a_hub_that_keeps_failing_ends_in_time(published, time_limit):
    published.fail(r"/resolve/", status=503, times=100)
    assert "not done within the 1 s limit" in fails_in_time(pull, REF, endpoint=published.url)


def test_a_get_that_never_answers_ends_in_time(published, hub_env, time_limit):
    published.misbehave(r"/resolve/", method="GET", stall=True)
    message = fails_in_time(download, REF, endpoint=published.url)
    assert "did not complete (not done within the 1 s limit, POLARPACK_HUB_TIMEOUT)" in message
    assert "nothing was kept" in message and cache_files(hub_env) == []


def test_a_download_silent_past_hf_hub_download_timeout_ends_then(published, monkeypatch):
    monkeypatch.setattr(hf_constants, "HF_HUB_DOWNLOAD_TIMEOUT", 0.5)
    published.misbehave(r"/resolve/", method="GET", stall=True)
    error = raised_within(HANG, download, REF, endpoint=published.url)
    assert isinstance(error, HubError)
    assert "(ReadTimeout: silent for 0.5 s, HF_HUB_DOWNLOAD_TIMEOUT)" in one_line(error)


def test_a_push_whose_commit_never_answers_ends_in_time(hub, polar_file, time_limit):
    before, mtime = polar_file.read_bytes(), polar_file.stat().st_mtime_ns
    hub.misbehave(r"/commit/", stall=True)
    message = fails_in_time(push, polar_file, REPO, token=TOKEN, endpoint=hub.url)
    assert message.startswith(f"cannot push {polar_file} to {REPO}: no usable answer from ")
    assert "the Hub may still apply the commit, and pushing again is safe" in message
    assert polar_file.read_bytes() == before and polar_file.stat().st_mtime_ns == mtime
    assert sorted(p.name for p in polar_file.parent.iterdir()) == ["mnv2.polar"]


def cli_fails_in_time(cli_error, args: list[str], *needles: str) -> str:
    start = time.monotonic()
    line = cli_error(args, *needles)
    assert time.monotonic() - start < HANG
    return line


@pytest.mark.parametrize("command", ["pull", "inspect"])
def test_cli_reads_end_in_time_with_one_line(published, time_limit, cli_error, command):
    published.misbehave(r"/resolve/", method="GET", stall=True)
    args = [command, REF, "--endpoint", published.url]
    cli_fails_in_time(cli_error, args, f"Error: cannot download {REF}", "1 s limit")


def test_cli_push_ends_in_time_with_one_line(hub, polar_file, time_limit, cli_error):
    hub.misbehave(r"/preupload/", stall=True)
    args = ["push", str(polar_file), REPO, "--endpoint", hub.url, "--token", TOKEN]
    cli_fails_in_time(cli_error, args, f"Error: cannot push {polar_file}", "1 s limit")


def test_an_explicit_time_limit_wins(published, monkeypatch):
    monkeypatch.setenv("POLARPACK_HUB_TIMEOUT", "600")
    published.misbehave(r"/resolve/", method="GET", stall=True)
    with pytest.raises(HubError, match="0.5 s limit"):
        pull_file(REF, endpoint=published.url, timeout=0.5)


# -- credentials in the endpoint ---------------------------------------------------------------

SECRET = "s3cret-mirror-token"


def with_credentials(url: str) -> str:
    return url.replace("http://", f"http://mirror-user:{SECRET}@", 1)


def test_credentials_in_the_endpoint_stay_out_of_files_cards_and_errors(hub, tmp_path):
    weights = tmp_path / "w.safetensors"
    save_file({"c.weight": torch.randn(4, 2, 3, 3)}, str(weights))
    hub.add_repo("me/weights", {"model.safetensors": weights.read_bytes()})
    # the mirror's credentials arrive as HTTP basic auth, as a proxy in front of a Hub takes them
    hub.tokens[base64.b64encode(f"mirror-user:{SECRET}".encode()).decode()] = "owner"
    env = {"HF_ENDPOINT": with_credentials(hub.url)}
    out = tmp_path / "w.polar"
    runner = CliRunner()
    extracted = runner.invoke(
        cli, ["extract", "hf://me/weights/model.safetensors", "--out", str(out)], env=env
    )
    assert extracted.exit_code == 0, extracted.output
    assert fmt.load(out).source["endpoint"] == hub.url
    pushed = runner.invoke(push_cmd, [str(out), REPO], env=env)
    assert pushed.exit_code == 0, pushed.output
    failed = runner.invoke(pull_cmd, [f"hf://{REPO}/missing.polar"], env=env)
    assert failed.exit_code == 1 and hub.url in failed.output
    published = b"".join(hub.files(REPO).values()).decode("utf-8", "replace")
    shown = extracted.output + pushed.output + failed.output + published + out.read_text()
    assert SECRET not in shown and "mirror-user" not in shown


def test_a_hub_checkpoint_named_like_a_torch_hub_file_is_not_held_to_it(hub, tmp_path):
    """A download is checked against its ETag; a date in its name is not a sha256 prefix."""
    weights = tmp_path / "model-20240315.pth"
    torch.save({"c.weight": torch.randn(4, 2, 3, 3)}, weights)
    hub.add_repo("me/weights", {weights.name: weights.read_bytes()})
    dist = extract(f"hf://me/weights/{weights.name}", endpoint=hub.url)
    assert dist.names == ["c"]


def test_a_distribution_never_holds_credentials_in_a_url():
    signed = with_credentials("http://h/x") + f"?a=1&token={SECRET}&X-Amz-Signature={SECRET}"
    dist = make_dist(type="hub", id="x", hub="hf://a/b/c", endpoint=signed)
    assert dist.source["endpoint"] == "http://h/x?a=1"
    assert SECRET not in fmt.encode(dist, "json").decode()


def test_credentials_in_the_endpoint_stay_out_of_exception_chains_and_http_logs(
    hub, polar_file, caplog
):
    """Requests go to the endpoint without its userinfo (the credentials travel as a header), so
    neither an exception's causes nor the HTTP client's log of each request holds them."""
    caplog.set_level(logging.DEBUG)
    endpoint = with_credentials(hub.url)
    hub.add_repo(REPO)
    errors = []
    for attempt in (
        lambda: pull(f"hf://{REPO}/missing.polar", endpoint=endpoint),
        lambda: push(polar_file, REPO, endpoint=endpoint),  # credentials the Hub does not know
    ):
        with pytest.raises(HubError) as err:
            attempt()
        errors.append("".join(traceback.format_exception(err.value)))
    assert "HTTP 401" in errors[1] and "HTTP Request: GET" in caplog.text
    assert SECRET not in "".join(errors) + caplog.text


@pytest.mark.parametrize("command", ["pull", "push"])
def test_a_password_with_a_quote_is_kept_out_of_errors(cli_error, command, polar_file):
    endpoint = "http://mirror:pa'ss@127.0.0.1:9"  # nothing listens on port 9
    args = (
        ["pull", f"hf://{REPO}/x.polar"] if command == "pull" else ["push", str(polar_file), REPO]
    )
    message = cli_error([*args, "--endpoint", endpoint, "--token", TOKEN], "127.0.0.1:9")
    assert "pa'ss" not in message and "mirror" not in message


@pytest.mark.parametrize(
    "endpoint", ["http://localhost:99999", "http://[::1", "http://localhost:x", "localhost:8080"]
)
@pytest.mark.parametrize("command", ["pull", "push"])
def test_a_malformed_endpoint_is_refused_before_any_request(
    cli_error, command, endpoint, polar_file
):
    args = (
        ["pull", f"hf://{REPO}/x.polar"] if command == "pull" else ["push", str(polar_file), REPO]
    )
    cli_error([*args, "--endpoint", endpoint, "--token", TOKEN], "fix --endpoint or HF_ENDPOINT")


def test_only_query_keys_that_name_a_secret_lose_their_values():
    """Keys are read as words: `author` or `design` are no `auth` or `sig`."""
    kept = "http://h/x?author=Igoe&design=b1&keyword=polarity"
    secrets = f"&apiKey={SECRET}&X-Amz-Credential={SECRET}&sessionId={SECRET}&sigv4={SECRET}"
    dist = make_dist(type="hub", id="x", hub="hf://a/b/c", endpoint=kept + secrets)
    assert dist.source["endpoint"] == kept


def test_a_run_refuses_credentials_in_its_endpoint(cli_error, tmp_path):
    cli_error(
        [
            "train",
            "--dist",
            "paper:alexnet",
            "--endpoint",
            with_credentials("http://h"),
            "--out",
            str(tmp_path / "run"),
        ],
        "HF_ENDPOINT",
    )
