"""polarpack.hub and `polarpack push/pull` against a fake Hub on 127.0.0.1 (tests/hub_server.py).

The real huggingface_hub client talks real HTTP to the fake server through the `endpoint`
argument; no client function is patched. Only huggingface_hub *constants* are set, to isolate the
cache and token paths, shorten timeouts and keep the client off huggingface.co (see `hub_env`).
"""

from __future__ import annotations

import json
import threading
import time

import pytest
from click.testing import CliRunner
from huggingface_hub import ModelCard
from huggingface_hub import constants as hf_constants

from polarpack import format as fmt
from polarpack.errors import FormatError, HubError
from polarpack.format import Distribution, LayerDistribution
from polarpack.hub import HubReference, download, is_hub_reference, parse_reference, pull, push
from polarpack_cli.hub import pull as pull_cmd
from polarpack_cli.hub import push as push_cmd
from polarpack_cli.main import cli

from hub_server import FakeHub, SilentEndpoint, git_blob_sha1

TOKEN = "hf_fake_write_token"
REPO = "owner/dists"
SOURCE_SHA = "ab" * 32
FORM = "hf://owner/repo[@revision]/path/to/file.polar"
SILENT_TIMEOUT = 1  # seconds: HF_HUB_ETAG_TIMEOUT in the silent-endpoint tests


def make_dist(**source) -> Distribution:
    layers = (
        LayerDistribution.from_counts("features.0", [2, 50, 48], kind="conv", shape=[4, 1, 5, 5]),
        LayerDistribution.from_counts("classifier.1", [0, 41, 39], kind="linear", shape=[10, 8]),
    )
    hub_source = {  # as polarpack.sources records an hf:// weights file
        "type": "hub",
        "id": "timm/resnet18.a1_in1k/model.safetensors",
        "hub": "hf://timm/resnet18.a1_in1k/model.safetensors",
        "sha256": SOURCE_SHA,
    }
    return Distribution(layers=layers, source=source or hub_source, extraction={"zero_tol": 0.0})


@pytest.fixture
def published(hub):
    """A repository holding one distribution in both encodings."""
    hub.add_repo(REPO, {"mnv2.polar": fmt.encode(make_dist(), "json"),
                        "mnv2.polar.safetensors": fmt.encode(make_dist(), "safetensors")})
    return hub


@pytest.fixture
def silent(hub_env, monkeypatch):
    monkeypatch.setattr(hf_constants, "HF_HUB_ETAG_TIMEOUT", SILENT_TIMEOUT)
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


def raised_within(seconds: float, fn, *args, **kwargs) -> BaseException:
    """Run fn in a thread; the exception it raised, failing the test if it takes longer than `seconds`."""
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
        ("hf://owner/repo@v1/sub/dir/file.polar", HubReference("owner/repo", "v1", "sub/dir/file.polar")),
        ("hf://owner/repo@refs/pr/3/file.polar", HubReference("owner/repo", "refs/pr/3", "file.polar")),
        ("hf://datasets/owner/repo/d.polar", HubReference("owner/repo", None, "d.polar", "dataset")),
    ],
)
def test_parse_reference(ref, expected):
    assert is_hub_reference(ref)
    assert parse_reference(ref) == expected


@pytest.mark.parametrize(
    "ref",
    [
        "hf://", "hf://owner", "hf://owner/repo", "hf://owner/repo/", "hf://owner/repo@/f.polar", "hf://a b/c/f",
        "owner/repo/f", "hf://buckets/owner/b/f.polar",
        "hf://owner/repo/../x.polar", "hf://owner/repo/sub/../../x.polar", "hf://owner/repo/./x.polar",
        "hf://owner/repo@../x.polar", "hf://owner/repo@refs/../../x/f.polar",
    ],
)
def test_parse_reference_refuses(ref):
    with pytest.raises(HubError) as err:
        parse_reference(ref)
    assert FORM in one_line(err.value)


@pytest.mark.parametrize("value", [None, "paper:alexnet", "owner/repo/f.polar", b"hf://o/r/f"])
def test_is_hub_reference_false(value):
    assert not is_hub_reference(value)


@pytest.mark.parametrize("ref, revision", [("hf://owner/dists/../dists/mnv2.polar", None),
                                           ("hf://owner/dists/mnv2.polar", "../main")])
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


def test_model_card(hub, polar_file):
    push(polar_file, REPO, token=TOKEN, endpoint=hub.url)
    card = ModelCard(hub.files(REPO)["README.md"].decode())
    assert card.data.library_name == "polarpack" and card.data.license == "mit"
    assert {"polarpack", "polarity-distribution"} <= set(card.data.tags)
    assert card.data.base_model == "timm/resnet18.a1_in1k"
    expected = [
        "| `features.0` | conv | 4x1x5x5 | 100 | 0.02 | 0.5 | 0.48 |", SOURCE_SHA,
        f"polarpack train --dist hf://{REPO}/mnv2.polar", f"polarpack inspect hf://{REPO}/mnv2.polar",
        f"| `mnv2.polar` | {len(polar_file.read_bytes()):,} |", "| the float32 weights | 720 |",
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
    dist = Distribution(layers=(LayerDistribution.from_signs("conv1", signs, granularity="pattern"),),
                        granularity="pattern")
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


@pytest.mark.parametrize("status, needles", [(500, ("HTTP 500", "try again")),
                                             (401, ("--token", "HF_TOKEN", "write access"))])
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
    [(False, None, "authentication required"), (True, None, "authentication required"),
     (True, "hf_wrong", "token rejected")],
)
def test_push_auth_errors_say_how_to_authenticate(hub, polar_file, exists, token, needle):
    if exists:
        hub.add_repo(REPO)
    with pytest.raises(HubError) as err:
        push(polar_file, REPO, endpoint=hub.url, token=token)
    message = one_line(err.value)
    assert needle in message and "--token" in message and "hf auth login" in message and "write access" in message


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
def test_push_rejects_bad_input_before_any_request(hub, tmp_path, monkeypatch, source, repo_id, error, match):
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
    assert path.resolve().name == git_blob_sha1(path.read_bytes())  # blobs are stored under their ETag
    assert pull(f"hf://{REPO}/{name}", endpoint=published.url) == make_dist()


@pytest.mark.parametrize("ref, revision", [(f"hf://{REPO}@v1/mnv2.polar", None), (f"hf://{REPO}/mnv2.polar", "v1")])
def test_pull_from_a_branch(hub, polar_file, ref, revision):
    push(polar_file, REPO, revision="v1", token=TOKEN, endpoint=hub.url)
    assert pull(ref, revision=revision, endpoint=hub.url) == fmt.load(polar_file)


def test_two_different_revisions_are_an_error(published):
    with pytest.raises(HubError, match="drop one"):
        download(f"hf://{REPO}@v1/mnv2.polar", endpoint=published.url, revision="v2")


@pytest.mark.parametrize(
    "ref, token, needles",
    [
        ("hf://ghost/nothing/x.polar", None, ("repository ghost/nothing not found", "--token", "private")),
        ("hf://ghost/nothing/x.polar", TOKEN, ("repository ghost/nothing not found",)),
        ("hf://owner/dists/nope.polar", None, ("file 'nope.polar' not found in owner/dists", "/owner/dists/tree/main")),
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
    assert "private" in message and "--token" in message and "HF_TOKEN" in message and "hf auth login" in message


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
    hub.add_repo(REPO, {"mnv2.polar": fmt.encode(make_dist(), "json")}, gated=True, approved={"tester"})
    assert pull(f"hf://{REPO}/mnv2.polar", endpoint=hub.url, token=TOKEN) == make_dist()


@pytest.mark.parametrize(
    "name, content",
    [("bad.polar", b'{"format_version": 1, "layers": []}\n'), ("bad.polar", b"garbage"),
     ("bad.polar.safetensors", b"\x08\x00\x00\x00\x00\x00\x00\x00{}      "), ("notes.txt", b"hello")],
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


def assert_fails_in_time(silent, fn, *args, **kwargs) -> None:
    """The call gives up after one timed request: HF_HUB_ETAG_TIMEOUT, not huggingface_hub's 6 x 60 s retry."""
    start = time.monotonic()
    error = raised_within(10 * SILENT_TIMEOUT, fn, *args, endpoint=silent.url, **kwargs)
    elapsed = time.monotonic() - start
    assert isinstance(error, HubError) and f"no usable answer from {silent.url}" in one_line(error)
    assert silent.connections == 1 and SILENT_TIMEOUT <= elapsed < 3 * SILENT_TIMEOUT


@pytest.mark.parametrize("fetch", [pull, download])
def test_a_silent_endpoint_fails_a_download_in_time(silent, fetch):
    assert_fails_in_time(silent, fetch, f"hf://{REPO}/mnv2.polar")


def test_a_silent_endpoint_fails_a_push_in_time(silent, polar_file):
    assert_fails_in_time(silent, push, polar_file, REPO, token=TOKEN)


def test_a_silent_endpoint_falls_back_to_the_cache(published, silent):
    cached = download(f"hf://{REPO}/mnv2.polar", endpoint=published.url)
    assert download(f"hf://{REPO}/mnv2.polar", endpoint=silent.url) == cached


# -- CLI -----------------------------------------------------------------------------------


def test_cli_push_prints_the_commit_then_unchanged(hub, polar_file):
    runner = CliRunner()
    first = runner.invoke(push_cmd, [str(polar_file), REPO, "--endpoint", hub.url, "--token", TOKEN])
    assert first.exit_code == 0, first.output
    assert first.stdout.strip() == f"{hub.url}/{REPO}/commit/{hub.head(REPO)}"
    assert f"polarpack inspect hf://{REPO}/mnv2.polar" in first.stderr
    again = runner.invoke(push_cmd, [str(polar_file), REPO, "--json"], env={"HF_TOKEN": TOKEN, "HF_ENDPOINT": hub.url})
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["changed"] is False


@pytest.mark.parametrize("out_name, json_encoded", [("copy.polar", True), ("copy.polar.safetensors", False)])
def test_cli_pull_writes_a_copy(published, tmp_path, out_name, json_encoded):
    out = tmp_path / out_name
    result = CliRunner().invoke(pull_cmd, [f"hf://{REPO}/mnv2.polar", "--out", str(out), "--json"],
                                env={"HF_ENDPOINT": published.url})
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["path"] == str(out) and report["layers"] == 2 and report["names"] == ["features.0", "classifier.1"]
    assert fmt.load(out) == make_dist() and (out.read_bytes()[:1] == b"{") == json_encoded


@pytest.mark.parametrize(
    "args, needle",
    [
        (["hf://ghost/nothing/x.polar"], "Error: cannot download hf://ghost/nothing/x.polar: repository"),
        (["hf://owner/dists/../x.polar"], "'..' path segments are not allowed"),
        (["hf://owner/dists/mnv2.polar", "--out", "no/such/dir/x.polar"], "does not exist"),
    ],
)
def test_cli_pull_errors_are_one_line(published, args, needle):
    result = CliRunner().invoke(pull_cmd, [*args, "--endpoint", published.url])
    assert result.exit_code == 1 and result.stdout == "" and "Traceback" not in result.output
    assert needle in result.stderr and result.stderr.count("\n") == 1
    assert published.calls("GET", r"/resolve/") == []


def test_cli_push_server_error_is_one_line(hub, polar_file):
    hub.fail(r"/commit/", status=500)
    result = CliRunner().invoke(push_cmd, [str(polar_file), REPO, "--endpoint", hub.url, "--token", TOKEN])
    progress, error = result.stderr.splitlines()
    assert result.exit_code == 1 and error.startswith(f"Error: cannot push {polar_file}") and "HTTP 500" in error


def test_main_cli_has_push_and_pull():
    assert {"push", "pull"} <= set(cli.commands)


def test_cli_inspect_reads_an_hf_reference(published):
    result = CliRunner().invoke(cli, ["inspect", f"hf://{REPO}/mnv2.polar", "--endpoint", published.url])
    assert result.exit_code == 0, result.output
    assert "features.0" in result.output and "classifier.1" in result.output
