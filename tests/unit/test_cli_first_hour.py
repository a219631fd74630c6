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
