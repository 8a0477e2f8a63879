"""polarpack.hub and `polarpack push/pull` against a fake Hub on 127.0.0.1 (tests/hub_server.py).

The real huggingface_hub client talks real HTTP to the fake server through the `endpoint`
setting; no client function is patched. Only huggingface_hub *constants* are set, to isolate the
cache/token paths and to keep the client from contacting huggingface.co (see `hub_env`).
"""

from __future__ import annotations

import importlib.util
import json
import os

import pytest
from click.testing import CliRunner
from huggingface_hub import ModelCard
from huggingface_hub import constants as hf_constants

from polarpack import format as fmt
from polarpack.errors import FormatError, HubError, PolarpackError
from polarpack.format import Distribution, LayerDistribution
from polarpack.hub import (
    HubReference,
    PushResult,
    download,
    is_hub_reference,
    parse_reference,
    pull,
    push,
    read_downloaded,
)
from polarpack_cli.hub import pull as pull_cmd
from polarpack_cli.hub import push as push_cmd

try:
    from tests.hub_server import FakeHub, git_blob_sha1
except ImportError:  # tests/ is not a package: pytest puts it on sys.path
    from hub_server import FakeHub, git_blob_sha1

TOKEN = "hf_fake_write_token"
REPO = "owner/dists"
SOURCE_SHA = "ab" * 32


def make_dist(**source) -> Distribution:
    layers = (
        LayerDistribution.from_counts("features.0", [2, 50, 48], kind="conv", shape=[4, 1, 5, 5]),
        LayerDistribution.from_counts("classifier.1", [0, 41, 39], kind="linear", shape=[10, 8]),
    )
    return Distribution(
        layers=layers,
        source=source
        or {  # as polarpack.sources records an hf:// weights file
            "type": "hub",
            "id": "timm/resnet18.a1_in1k/model.safetensors",
            "hub": "hf://timm/resnet18.a1_in1k/model.safetensors",
            "sha256": SOURCE_SHA,
        },
        extraction={"zero_tol": 0.0},
    )


@pytest.fixture
def hub_env(tmp_path, monkeypatch):
    """Isolate every place huggingface_hub reads or writes user state."""
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_ENDPOINT", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf_cache"))
    monkeypatch.setattr(hf_constants, "HF_TOKEN_PATH", str(tmp_path / "hf_home" / "token"))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    # With telemetry on, the client's user-agent builder fetches an "agent harness" registry from
    # https://huggingface.co once per process, whatever the endpoint. Tests stay on loopback.
    monkeypatch.setattr(hf_constants, "HF_HUB_DISABLE_TELEMETRY", True)
    return tmp_path


@pytest.fixture
def hub(hub_env):
    with FakeHub() as server:
        yield server


@pytest.fixture
def polar_file(tmp_path):
    path = tmp_path / "mnv2.polar"
    fmt.save(make_dist(), path)
    return path


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text, text
    return text


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
    assert parse_reference(ref).uri == ref


@pytest.mark.parametrize("ref", ["hf://", "hf://owner", "hf://owner/repo", "hf://owner/repo@/f.polar", "hf://a b/c/f", "owner/repo/f"])
def test_parse_reference_rejects_malformed(ref):
    with pytest.raises(HubError) as err:
        parse_reference(ref)
    assert "hf://owner/repo[@revision]/path/to/file.polar" in one_line(err.value)
    assert not is_hub_reference(None) and not is_hub_reference("paper:alexnet")


# -- push / pull ---------------------------------------------------------------------------


def test_push_then_pull_gives_identical_bytes(hub, polar_file, polar_schema_validator):
    dist = fmt.load(polar_file)
    result = push(polar_file, REPO, token=TOKEN, endpoint=hub.url)
    assert isinstance(result, PushResult) and result.changed and result.repo_id == REPO
    assert result.files == ["mnv2.polar", "mnv2.polar.safetensors", "README.md"]
    assert result.commit_url == f"{hub.url}/{REPO}/commit/{hub.head(REPO)}"

    remote = hub.files(REPO)
    assert remote["mnv2.polar"] == polar_file.read_bytes()
    polar_schema_validator.validate(json.loads(remote["mnv2.polar"]))
    assert remote["mnv2.polar.safetensors"] == fmt.encode_safetensors(dist)
    assert len(hub.calls("POST", r"/commit/")) == 1  # one commit for all three files

    for name in ("mnv2.polar", "mnv2.polar.safetensors"):
        path = download(f"hf://{REPO}/{name}", endpoint=hub.url)
        assert path.read_bytes() == remote[name]
        assert str(path).startswith(os.environ["HF_HUB_CACHE"])  # went through the HF cache
        assert path.resolve().name == git_blob_sha1(remote[name])  # blobs are stored under the ETag
        assert pull(f"hf://{REPO}/{name}", endpoint=hub.url) == dist


def test_model_card_metadata_and_body(hub, polar_file):
    push(polar_file, REPO, token=TOKEN, endpoint=hub.url)
    card = ModelCard.load(download(f"hf://{REPO}/README.md", endpoint=hub.url))
    assert card.data.library_name == "polarpack"
    assert {"polarpack", "polarity-distribution"} <= set(card.data.tags)
    assert card.data.license == "mit"
    assert card.data.base_model == "timm/resnet18.a1_in1k"
    body = card.text
    for needle in (
        "`features.0`", "`classifier.1`", "0.02", SOURCE_SHA,
        f"polarpack train --dist hf://{REPO}/mnv2.polar", f"polarpack inspect hf://{REPO}/mnv2.polar",
        "2 bits per weight", "float32 weights", f"| {len(polar_file.read_bytes()):,} |",
    ):
        assert needle in body, needle


def test_card_for_a_non_hub_source_has_no_base_model(hub):
    result = push("paper:alexnet", REPO, token=TOKEN, endpoint=hub.url, license="apache-2.0")
    assert result.files[0] == "alexnet.polar"
    card = ModelCard.load(download(f"hf://{REPO}/README.md", endpoint=hub.url))
    assert card.data.base_model is None and card.data.license == "apache-2.0"
    assert "not recorded" in card.text  # the paper preset has no source sha256


def test_second_push_of_same_content_is_unchanged(hub, polar_file):
    first = push(polar_file, REPO, token=TOKEN, endpoint=hub.url)
    commits = hub.n_commits(REPO)
    second = push(polar_file, REPO, token=TOKEN, endpoint=hub.url)
    assert first.changed and not second.changed
    assert second.commit_url == first.commit_url
    assert hub.n_commits(REPO) == commits and len(hub.calls("POST", r"/commit/")) == 1
    # a different distribution under the same name is a change again
    fmt.save(make_dist(type="file", path="other.pth"), polar_file)
    assert push(polar_file, REPO, token=TOKEN, endpoint=hub.url).changed


@pytest.mark.parametrize("status, needles", [(500, ("HTTP 500", "try again")), (401, ("--token", "HF_TOKEN", "write access"))])
def test_failed_commit_is_clear_leaves_local_file_and_retry_works(hub, polar_file, status, needles):
    before, mtime = polar_file.read_bytes(), polar_file.stat().st_mtime_ns
    hub.fail(r"/api/models/owner/dists/commit/", status=status)
    with pytest.raises(HubError) as err:
        push(polar_file, REPO, token=TOKEN, endpoint=hub.url)
    message = one_line(err.value)
    assert message.startswith(f"cannot push {polar_file} to {REPO}")
    for needle in needles:
        assert needle in message
    assert polar_file.read_bytes() == before and polar_file.stat().st_mtime_ns == mtime
    assert set(hub.files(REPO)) == {".gitattributes"}  # nothing half-committed
    assert sorted(p.name for p in polar_file.parent.iterdir() if p.name.startswith(".")) == []  # no temp files

    retry = push(polar_file, REPO, token=TOKEN, endpoint=hub.url)
    assert retry.changed and hub.files(REPO)["mnv2.polar"] == before


def test_push_without_token_says_how_to_authenticate(hub, polar_file):
    with pytest.raises(HubError) as err:  # repository does not exist yet
        push(polar_file, REPO, endpoint=hub.url)
    assert "--token" in one_line(err.value) and "huggingface-cli login" in str(err.value)
    push("paper:alexnet", REPO, token=TOKEN, endpoint=hub.url)
    with pytest.raises(HubError) as err:  # repository exists (create_repo's 401 fallback path)
        push(polar_file, REPO, endpoint=hub.url)
    assert "authentication required" in one_line(err.value) and "write access" in str(err.value)
    with pytest.raises(HubError, match="token rejected"):
        push(polar_file, REPO, endpoint=hub.url, token="hf_wrong")


def test_push_private_repo_and_pull_needs_token(hub, polar_file):
    push(polar_file, REPO, private=True, token=TOKEN, endpoint=hub.url)
    assert hub.repos[("model", REPO)].private
    with pytest.raises(HubError) as err:
        pull(f"hf://{REPO}/mnv2.polar", endpoint=hub.url)
    message = one_line(err.value)
    assert "private" in message and "--token" in message and "HF_TOKEN" in message and "huggingface-cli login" in message
    assert pull(f"hf://{REPO}/mnv2.polar", endpoint=hub.url, token=TOKEN) == fmt.load(polar_file)


@pytest.mark.parametrize("token", [None, TOKEN])
def test_pull_from_a_gated_repo_says_to_accept_and_authenticate(hub, token):
    hub.add_repo(REPO, {"mnv2.polar": fmt.encode_json(make_dist())}, gated=True)
    with pytest.raises(HubError) as err:
        pull(f"hf://{REPO}/mnv2.polar", endpoint=hub.url, token=token)
    message = one_line(err.value)
    assert "is gated: accept its conditions" in message and "--token" in message and "HF_TOKEN" in message
    hub.repos[("model", REPO)].approved.add("tester")
    assert pull(f"hf://{REPO}/mnv2.polar", endpoint=hub.url, token=TOKEN) == make_dist()


def test_push_to_a_branch(hub, polar_file):
    result = push(polar_file, REPO, revision="v1", token=TOKEN, endpoint=hub.url)
    assert result.revision == "v1" and "mnv2.polar" in hub.files(REPO, "v1")
    assert "mnv2.polar" not in hub.files(REPO, "main")
    card = hub.files(REPO, "v1")["README.md"].decode()
    assert f"hf://{REPO}@v1/mnv2.polar" in card
    assert pull(f"hf://{REPO}@v1/mnv2.polar", endpoint=hub.url) == fmt.load(polar_file)
    assert pull(f"hf://{REPO}/mnv2.polar", endpoint=hub.url, revision="v1") == fmt.load(polar_file)
    with pytest.raises(HubError, match="drop one"):
        download(f"hf://{REPO}@v1/mnv2.polar", endpoint=hub.url, revision="v2")


def test_push_rejects_bad_input(hub, tmp_path):
    with pytest.raises(HubError, match="owner/name"):
        push("paper:alexnet", "not a repo", token=TOKEN, endpoint=hub.url)
    with pytest.raises(FormatError, match="no such file"):
        push(tmp_path / "missing.polar", REPO, token=TOKEN, endpoint=hub.url)
    assert hub.requests == []  # rejected before any request


@pytest.mark.parametrize(
    "ref, token, needles",
    [
        ("hf://ghost/nothing/x.polar", None, ("repository ghost/nothing not found", "--token")),
        ("hf://ghost/nothing/x.polar", TOKEN, ("repository ghost/nothing not found",)),
        ("hf://owner/dists/nope.polar", None, ("file 'nope.polar' not found in owner/dists", "tree/main")),
        ("hf://owner/dists@v9/mnv2.polar", None, ("revision 'v9' not found in owner/dists",)),
    ],
)
def test_pull_errors_are_one_line(hub, ref, token, needles):
    hub.add_repo(REPO, {"mnv2.polar": fmt.encode_json(make_dist())})
    with pytest.raises(HubError) as err:
        pull(ref, endpoint=hub.url, token=token)
    message = one_line(err.value)
    assert message.startswith(f"cannot download {ref}")
    for needle in needles:
        assert needle in message


def test_pull_of_an_invalid_file_names_the_hub_ref(hub):
    hub.add_repo(REPO, {"bad.polar": b'{"format_version": 1, "layers": []}\n', "notes.txt": b"hello"})
    with pytest.raises(FormatError) as err:
        pull(f"hf://{REPO}/bad.polar", endpoint=hub.url)
    assert one_line(err.value).startswith(f"hf://{REPO}/bad.polar:") and "not a valid .polar" in str(err.value)
    with pytest.raises(FormatError, match=r"hf://owner/dists/notes.txt.*should point to a \.polar"):
        pull(f"hf://{REPO}/notes.txt", endpoint=hub.url)


def test_pull_recovers_from_a_transient_server_error(hub):
    hub.add_repo(REPO, {"mnv2.polar": fmt.encode_json(make_dist())})
    hub.fail(r"/resolve/", status=503, times=1, method="HEAD")
    assert pull(f"hf://{REPO}/mnv2.polar", endpoint=hub.url) == make_dist()
    assert [status for _, _, status in hub.calls("HEAD", r"/resolve/")] == [503, 200]


def test_endpoint_from_environment_at_call_time(hub, monkeypatch):
    hub.add_repo(REPO, {"mnv2.polar": fmt.encode_json(make_dist())})
    monkeypatch.setenv("HF_ENDPOINT", hub.url)  # set after huggingface_hub was imported
    assert pull(f"hf://{REPO}/mnv2.polar") == make_dist()


@pytest.mark.parametrize("how", ["env", "constant"])
def test_offline_with_warm_cache_works_and_cold_cache_is_clear(hub, monkeypatch, how):
    hub.add_repo(REPO, {"mnv2.polar": fmt.encode_json(make_dist()), "other.polar": fmt.encode_json(make_dist())})
    online = download(f"hf://{REPO}/mnv2.polar", endpoint=hub.url)
    seen = len(hub.requests)
    if how == "env":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    assert download(f"hf://{REPO}/mnv2.polar", endpoint=hub.url) == online
    assert pull(f"hf://{REPO}/mnv2.polar", endpoint=hub.url) == make_dist()
    with pytest.raises(HubError) as err:
        pull(f"hf://{REPO}/other.polar", endpoint=hub.url)
    message = one_line(err.value)
    assert "offline mode is on (HF_HUB_OFFLINE)" in message and "not in the local cache" in message
    assert os.environ["HF_HUB_CACHE"] in message and "unset HF_HUB_OFFLINE" in message
    with pytest.raises(HubError, match="offline mode is on"):
        push("paper:alexnet", REPO, token=TOKEN, endpoint=hub.url)
    assert len(hub.requests) == seen  # offline means no request at all


def test_connection_errors_are_translated():
    import httpx2
    from huggingface_hub.errors import LocalEntryNotFoundError

    from polarpack.hub import _translate

    refused = _translate(httpx2.ConnectError("connection refused"), action="cannot push x", repo_id=REPO, endpoint="http://127.0.0.1:9")
    assert str(refused) == (
        "cannot push x: cannot connect to http://127.0.0.1:9 (connection refused); "
        "check your connection, proxy and HF_ENDPOINT, then retry"
    )
    uncached = _translate(LocalEntryNotFoundError("no"), action="cannot download r", repo_id=REPO, endpoint=None, path="f.polar")
    assert "cannot reach https://huggingface.co" in str(uncached) and "not in the local cache" in str(uncached)
    assert _translate(KeyError("x"), action="a", repo_id=REPO, endpoint=None) is None


# -- CLI -----------------------------------------------------------------------------------


def test_cli_push_and_pull(hub, polar_file, tmp_path):
    runner = CliRunner()
    result = runner.invoke(push_cmd, [str(polar_file), REPO, "--endpoint", hub.url, "--token", TOKEN])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"{hub.url}/{REPO}/commit/{hub.head(REPO)}"
    assert f"polarpack inspect hf://{REPO}/mnv2.polar" in result.stderr

    again = runner.invoke(push_cmd, [str(polar_file), REPO, "--endpoint", hub.url, "--json"], env={"HF_TOKEN": TOKEN})
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["changed"] is False

    out = tmp_path / "copy.polar"
    pulled = runner.invoke(pull_cmd, [f"hf://{REPO}/mnv2.polar", "--endpoint", hub.url, "--out", str(out)])
    assert pulled.exit_code == 0, pulled.output
    assert pulled.stdout.strip() == str(out) and out.read_bytes() == polar_file.read_bytes()
    assert "valid distribution, 2 layers" in pulled.stderr

    st_out = tmp_path / "copy.polar.safetensors"
    as_json = runner.invoke(pull_cmd, [f"hf://{REPO}/mnv2.polar", "--out", str(st_out), "--json"], env={"HF_ENDPOINT": hub.url})
    assert as_json.exit_code == 0, as_json.output
    info = json.loads(as_json.stdout)
    assert info["path"] == str(st_out) and info["layers"] == 2 and info["names"] == ["features.0", "classifier.1"]
    assert fmt.load(st_out) == fmt.load(polar_file) and st_out.read_bytes()[:1] != b"{"


def test_cli_errors_are_one_line(hub, polar_file, tmp_path):
    runner = CliRunner()
    missing = runner.invoke(pull_cmd, ["hf://ghost/nothing/x.polar", "--endpoint", hub.url])
    assert missing.exit_code == 1 and missing.stdout == ""
    assert missing.stderr.startswith("Error: cannot download hf://ghost/nothing/x.polar") and missing.stderr.count("\n") == 1

    hub.fail(r"/commit/", status=500)
    failed = runner.invoke(push_cmd, [str(polar_file), REPO, "--endpoint", hub.url, "--token", TOKEN])
    assert failed.exit_code == 1 and "HTTP 500" in failed.stderr and "Traceback" not in failed.output

    bad_out = runner.invoke(pull_cmd, ["hf://owner/dists/x.polar", "--endpoint", hub.url, "--out", str(tmp_path / "no" / "x.polar")])
    assert bad_out.exit_code == 1 and "does not exist" in bad_out.stderr
    assert hub.calls("HEAD", r"owner/dists/resolve/") == []  # --out is checked before downloading


def _main_cli():
    try:
        from polarpack_cli.main import cli
    except ImportError as exc:  # other command modules still being written
        pytest.skip(f"polarpack_cli.main not importable yet: {exc}")
    return cli


def test_main_cli_has_push_and_pull():
    cli = _main_cli()
    assert {"push", "pull"} <= set(cli.commands)


@pytest.mark.skipif(importlib.util.find_spec("polarpack.sources") is None, reason="polarpack.sources not written yet")
def test_cli_inspect_reads_hf_reference(hub):
    cli = _main_cli()
    hub.add_repo(REPO, {"mnv2.polar": fmt.encode_json(make_dist())})
    result = CliRunner().invoke(cli, ["inspect", f"hf://{REPO}/mnv2.polar", "--endpoint", hub.url])
    assert result.exit_code == 0, result.output
    assert "features.0" in result.output and "classifier.1" in result.output


def test_read_downloaded_names_ref(tmp_path):
    bad = tmp_path / "x.polar"
    bad.write_bytes(b"garbage")
    with pytest.raises(PolarpackError, match="hf://o/r/x.polar"):
        read_downloaded(bad, "hf://o/r/x.polar")
