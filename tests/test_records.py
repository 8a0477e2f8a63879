"""The records of a run read back across versions: summary.json as a `RunSummary` (every
committed summary of the repository, the older shapes the code accepts, and what it writes), and
config.json's options as a `TrainConfig`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from polarpack.errors import ConfigError
from polarpack.experiments.grid import config_hash, run_id_for
from polarpack.training import runs
from polarpack.training.config import TrainConfig
from polarpack.training.runs import RunSummary

REPO = Path(__file__).resolve().parents[1]
SUMMARIES = sorted(REPO.glob("results/**/summary.json"))
CONFIGS = sorted(REPO.glob("results/**/config.json"))


def test_the_repository_holds_committed_runs_of_several_versions():
    assert len(SUMMARIES) >= 250 and len(CONFIGS) >= 250
    shapes = {frozenset(json.loads(p.read_text())) for p in SUMMARIES}
    assert any("config_digest" not in s for s in shapes) and any(
        "config_digest" in s for s in shapes
    )


@pytest.mark.parametrize("path", SUMMARIES, ids=lambda p: p.parent.name)
def test_every_committed_summary_reads_and_writes_back_the_same(path, tmp_path):
    data = json.loads(path.read_text())
    summary = runs.load_summary(path.parent)
    assert summary.status == data["status"] and summary.finished is (data["status"] != "running")
    assert summary.to_json() == {"config_digest": None, **data}  # the first versions lack it
    runs.write_summary(tmp_path, summary)
    assert runs.load_summary(tmp_path) == summary


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.parent.name)
def test_every_committed_config_reads_as_the_options_it_was_run_with(path, tmp_path):
    saved = runs.load_config(path.parent)
    config = saved.train_config()
    assert saved.run_token and saved.environment and saved.resolved["device"]
    assert config.to_dict() == {**TrainConfig().to_dict(), **saved.options}  # added: defaults
    if path.parent.parent.name == "runs":  # a grid's run: its directory is named by its options
        assert path.parent.name.endswith(config_hash(saved.options)[:8])
        assert path.parent.name.endswith(run_id_for(config)[-8:])
    runs.write_config(tmp_path, saved)
    assert json.loads((tmp_path / "config.json").read_text()) == json.loads(path.read_text())


def test_a_resume_is_recorded_in_the_config(tmp_path):
    options = TrainConfig(method="scratch").to_dict()
    runs.write_config(tmp_path, runs.RunConfig(options, "token", {"device": "cpu"}, {"cpu": "A"}))
    runs.record_resume(tmp_path, 3, {"cpu": "B"})
    saved = runs.load_config(tmp_path)
    assert saved.resumes == ({"epoch": 3, "environment": {"cpu": "B"}},)
    assert saved.options == options and runs.read_config(tmp_path) == (options, "token")
    assert saved.train_config() == TrainConfig(method="scratch")


@pytest.mark.parametrize(
    "text",
    [
        "[]",
        '{"config": 5, "run_token": "t"}',
        '{"config": {}, "run_token": 5}',
        '{"config": {}, "run_token": "t", "resumes": [1]}',
        '{"config": {}, "run_token": "t", "environment": "here"}',
    ],
)
def test_a_config_of_the_wrong_shape_is_refused(tmp_path, text):
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(ConfigError, match="config.json: not a polarpack run config"):
        runs.load_config(tmp_path)


def test_unknown_options_in_a_config_are_refused_by_name(tmp_path):
    runs.write_config(tmp_path, runs.RunConfig({"colour": "red"}, "t"))
    with pytest.raises(ConfigError, match=r"unknown training option\(s\) \['colour'\]"):
        runs.load_config(tmp_path).train_config()


OLDER_SHAPES = [
    {"status": "completed", "final_val_acc": 0.5},  # written by hand, or by the first versions
    {"status": "failed", "error": "boom", "run_token": None},  # a grid's cell that raised
    {
        "status": "running",
        "epochs_done": 1,
        "epochs": 3,
        "final_val_acc": 0.1,
        "final_train_acc": 0.1,
        "best_val_acc": 0.1,
        "threshold": 0.4,
        "epochs_to_threshold": None,
        "train_seconds": 2,
        "run_token": "t",
        "a_key_of_a_later_version": [1],
    },
]


@pytest.mark.parametrize("data", OLDER_SHAPES)
def test_older_and_newer_shapes_read(data, tmp_path):
    (tmp_path / "summary.json").write_text(json.dumps(data))
    summary = runs.load_summary(tmp_path)
    assert summary.status == data["status"]
    assert summary.final_val_acc == data.get("final_val_acc")
    assert summary.error == data.get("error")
    assert "a_key_of_a_later_version" not in summary.to_json()


@pytest.mark.parametrize(
    "text, needle",
    [
        ("[]", "not a run summary (a JSON object)"),
        ('{"status": "done"}', "status is 'done'"),
        ('{"status": "completed", "epochs_done": "3"}', "epochs_done is '3'"),
        ('{"status": "completed", "final_val_acc": true}', "final_val_acc is True"),
    ],
)
def test_a_summary_of_the_wrong_shape_is_refused_naming_the_key(tmp_path, text, needle):
    (tmp_path / "summary.json").write_text(text)
    with pytest.raises(ConfigError, match="summary.json: not a run summary") as caught:
        runs.load_summary(tmp_path)
    assert needle in str(caught.value)


def test_no_summary_yet_is_none(tmp_path):
    assert runs.load_summary(tmp_path) is None


accuracy = st.none() | st.floats(0, 1)


@given(
    status=st.sampled_from(runs.STATUSES),
    done=st.integers(0, 10_000),
    acc=accuracy,
    best=accuracy,
    seconds=st.floats(0, 1e9),
    token=st.none() | st.text(max_size=40),
    error=st.none() | st.text(max_size=200),
)
def test_what_the_writer_writes_the_reader_reads(status, done, acc, best, seconds, token, error):
    summary = RunSummary(
        status,
        epochs_done=done,
        final_val_acc=acc,
        best_val_acc=best,
        train_seconds=seconds,
        run_token=token,
        error=error,
    )
    text = json.dumps(summary.to_json())
    assert RunSummary.from_json(json.loads(text), "summary.json") == summary


def test_a_run_summarizes_its_epochs(tmp_path):
    rows = [
        {"epoch": 1, "val_acc": 0.3, "train_acc": 0.2, "epoch_seconds": 1.5},
        {"epoch": 2, "val_acc": 0.45, "train_acc": 0.4, "epoch_seconds": 2.0},
        {"epoch": 3, "val_acc": 0.41, "train_acc": 0.5, "epoch_seconds": 2.5},
    ]
    summary = runs.summarize(rows, epochs=5, threshold=0.4, status="running", token="t", digest="d")
    assert (summary.epochs_done, summary.final_val_acc, summary.best_val_acc) == (3, 0.41, 0.45)
    assert (summary.epochs_to_threshold, summary.train_seconds) == (2, 6.0)
    assert not summary.finished
    runs.write_summary(tmp_path, summary)
    assert runs.load_summary(tmp_path) == summary
