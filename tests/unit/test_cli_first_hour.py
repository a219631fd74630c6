"""A user's first hour (issue 16): relative stores, `cai stage` errors, help texts, cache cleaning and
readable `cai status` / `cai report` output. CLI tests only: nothing here loads a model."""

from __future__ import annotations

from pathlib import Path

import pytest

from cai.cli import DEFAULT_STORE, main
from cai.store.fs import local_path, normalize


def test_relative_file_uri_resolves_under_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert local_path("file://./artifacts") == tmp_path / "artifacts"
    assert local_path("file://artifacts/x/") == tmp_path / "artifacts" / "x"
    assert local_path(DEFAULT_STORE) == tmp_path / "artifacts"
    # Absolute forms are unchanged.
    assert normalize("file:///srv/store/") == "file:///srv/store"
    assert local_path("file://localhost/srv/store") == Path("/srv/store")


@pytest.mark.parametrize("make", [False, True], ids=["missing", "empty"])
def test_status_of_a_missing_or_empty_store_says_so_and_fails(tmp_path, monkeypatch, capsys, make):
    monkeypatch.chdir(tmp_path)
    if make:
        (tmp_path / "demo-out").mkdir()
    assert main(["status", "--store", "file://./demo-out"]) == 1
    err = capsys.readouterr().err
    assert str(tmp_path / "demo-out") in err
    assert ("does not exist" in err) != make
    assert ("no resources" in err) == make


# --- cai stage ---------------------------------------------------------------------------------------


def _help(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--help"])
    assert exit_.value.code == 0
    return capsys.readouterr().out


def test_stage_help_lists_the_registered_stages_and_where_the_spec_comes_from(capsys):
    from cai.api.kinds import STAGES
    from cai.controller.builders import SPEC_FILE

    out = _help(["stage"], capsys)
    for name, (kind, _) in STAGES.items():
        assert any(line.split() == [name, kind.kind] for line in out.splitlines()), name
    assert "ConfigMap" in out and SPEC_FILE in out and "cai run" in out


def test_unknown_stage_is_reported_as_such_before_the_spec_is_read(tmp_path, monkeypatch, capsys):
    from cai.stages import runtime

    monkeypatch.setattr(runtime, "TERMINATION_LOG", tmp_path / "termination-log")
    assert main(["stage", "generate-revisons", "--spec", str(tmp_path / "absent.json")]) == 1
    err = capsys.readouterr().err
    assert "unknown stage 'generate-revisons'" in err and "generate-revisions" in err
    assert "not found" not in err
    assert "unknown stage" in (tmp_path / "termination-log").read_text()


def test_missing_s3_credentials_end_in_one_line_not_a_traceback(tmp_path, monkeypatch, capsys):
    from cai.stages import runtime

    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "CAI_S3_CREDENTIALS_DIR", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    # Nothing else may supply credentials: no files, no instance metadata; the endpoint is a closed port.
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("CAI_S3_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(runtime, "TERMINATION_LOG", tmp_path / "termination-log")
    spec = tmp_path / "spec.json"
    spec.write_text('{"stage": "generate-revisions", "kind": "CritiqueRun", "name": "x", "spec": {},'
                    ' "output": "s3://bucket/default/critiqueruns/x/local/generate-revisions"}')
    assert main(["stage", "generate-revisions", "--spec", str(spec)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    message = (tmp_path / "termination-log").read_text()
    assert "\n" not in message.strip()
    assert "s3://bucket/default/critiqueruns/x/local/generate-revisions" in message
    assert "NoCredentialsError" in message and "AWS_ACCESS_KEY_ID" in message
    assert err.strip() == f"error: {message}"
