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


# --- help texts --------------------------------------------------------------------------------------


def _subparsers(parser):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield name, sub
                for sub_name, subsub in _subparsers(sub):
                    yield f"{name} {sub_name}", subsub


def test_every_subcommand_has_a_description_and_help_fits_80_columns(monkeypatch, capsys):
    from cai.cli import build_parser

    monkeypatch.setenv("COLUMNS", "80")
    commands = dict(_subparsers(build_parser()))
    assert {"run", "status", "stage", "models", "models prepare", "models clean", "operator"} <= set(commands)
    for name, parser in commands.items():
        assert parser.description and len(parser.description) > 20, name
        out = _help(name.split(), capsys)
        assert parser.description.split()[0] in out, name
        assert max(map(len, out.splitlines())) <= 80, name


def test_models_prepare_help_lists_the_builtin_models(monkeypatch, capsys):
    from cai.models.refs import BUILTIN_MODELS

    monkeypatch.setenv("COLUMNS", "80")
    out = _help(["models", "prepare"], capsys)
    for name in BUILTIN_MODELS:
        assert f"builtin:{name}" in out


def test_operator_help_names_leader_election_kubeconfig_fallback_and_port_defaults(monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "160")
    out = " ".join(_help(["operator"], capsys).split())
    assert "--standalone no leader election" in out
    assert "$KUBECONFIG, else ~/.kube/config" in out
    assert "/metrics port (default: 8080)" in out and "readiness port (default: 8081)" in out


# --- cai models clean --------------------------------------------------------------------------------


def _fill(path: Path, size: int) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / "model.safetensors").write_bytes(b"\0" * size)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A model cache with a built-in model, a hub snapshot, an object-store copy and stage checkpoints."""
    from cai.models.clean import entry_for

    root = tmp_path / "cache"
    monkeypatch.setenv("CAI_CACHE_DIR", str(root))
    entries = {
        "builtin:tiny-random": 3_000_000,
        "hf:org/model": 2_000_000,
        "s3://bucket/models/m": 1_000_000,
    }
    for ref, size in entries.items():
        _fill(entry_for(ref), size)
    _fill(root / "work" / "critiquerun-x-finetune-0123", 500_000)
    return root, {ref: entry_for(ref) for ref in entries}


def test_clean_named_refs_removes_only_those_and_prints_them_with_sizes(cache, capsys):
    root, entries = cache
    assert main(["models", "clean", "builtin:tiny-random", "hf:org/model"]) == 0
    out = capsys.readouterr().out
    assert f"removed {entries['builtin:tiny-random']}\t3.0 MB" in out
    assert f"removed {entries['hf:org/model']}\t2.0 MB" in out
    assert "freed 5.0 MB in 2 item(s)" in out
    assert not entries["builtin:tiny-random"].exists() and not entries["hf:org/model"].exists()
    assert entries["s3://bucket/models/m"].exists() and (root / "work").exists()


def test_clean_everything_keeps_stage_checkpoints_and_says_so(cache, capsys):
    root, entries = cache
    assert main(["models", "clean"]) == 0
    captured = capsys.readouterr()
    for path in entries.values():
        assert not path.exists()
        assert f"removed {path}\t" in captured.out
    assert "freed 6.0 MB in 3 item(s)" in captured.out
    assert f"kept {root / 'work'} (0.5 MB)" in captured.err
    assert (root / "work" / "critiquerun-x-finetune-0123").exists()
    assert main(["models", "clean"]) == 0
    assert "no models in the cache" in capsys.readouterr().err


def test_clean_reports_what_it_does_not_remove(cache, capsys, tmp_path):
    assert main(["models", "clean", "builtin:smollm2-135m-instruct"]) == 0
    assert "builtin:smollm2-135m-instruct: not in the cache" in capsys.readouterr().err
    model_dir = tmp_path / "my-model"
    _fill(model_dir, 10)
    assert main(["models", "clean", str(model_dir)]) == 1
    assert "not removed" in capsys.readouterr().err and model_dir.exists()
    assert main(["models", "clean", "builtin:nope"]) == 1
    assert "unknown builtin model 'nope'" in capsys.readouterr().err


# --- terminal output of cai status / cai report ------------------------------------------------------

WIDTHS = [80, 160]
METRICS = {  # what an RLAIFRun's status holds after the quickstart: about 30 figures
    **{f"{name}{x}": 0.5 + i / 100 for i, (name, x) in enumerate(
        (name, x) for name in ("harmlessWinRate", "helpfulWinRate", "harmlessWinRateVsStart",
                               "helpfulWinRateVsStart", "slHarmlessWinRateVsStart", "slHelpfulWinRateVsStart")
        for x in ("", "CiLow", "CiHigh"))},
    "rewardFirst": 0.584, "rewardLast": 0.571, "rewardMean": 0.56, "kl": 0.0123, "klLast": 0.015,
    "steps": 16, "evaluatedPrompts": 10, "helpfulPrompts": 6, "tokensPerSecond": 103.5,
    "heldOutAccuracy": 0.625, "calibrationError": 0.083, "trainPolicySeconds": 280.0,
}


def _stored(tmp_path: Path) -> tuple[str, list]:
    """The quickstart's three runs, finished, in a store under a long path (URIs longer than 80)."""
    import yaml

    from cai.api.manifest import parse_resource
    from cai.local import state

    root = tmp_path / "a-rather-long-directory-name-for-artifacts" / "of-the-first-hour-demo"
    store = root.as_uri()
    resources = []
    for path in sorted((Path(__file__).resolve().parents[2] / "examples" / "quickstart").glob("*.yaml")):
        res, problems = parse_resource(yaml.safe_load(path.read_text()), path.name)
        assert res is not None and not problems
        base = f"{store}/default/{res.info.plural}/{res.name}/local"
        outputs = {field: f"{base}/{field}" for field in res.info.status.model_fields["outputs"].annotation.model_fields}
        if "report" in outputs:
            outputs["report"] = f"{base}/evaluate/report.html"
        res.status = res.info.status.model_validate({
            "conditions": [{"type": res.info.summary_condition, "status": "True", "reason": "Completed"}],
            "stages": [{"name": s.name, "completionTime": "2026-12-05T08:00:00Z"} for s in res.info.stages],
            "outputs": outputs,
            "metrics": METRICS if res.kind == "RLAIFRun" else {"rows": 12.0, "finalLoss": 1.25},
        })
        state.save(store, res)
        resources.append(res)
    return store, resources


def _table_rows(out: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("│").split("│")] for line in out.splitlines()
            if line.startswith("│") and "KIND" not in line]


@pytest.mark.parametrize("width", WIDTHS)
def test_status_output_piped_at_80_and_160_columns(tmp_path, monkeypatch, capsys, width):
    store, resources = _stored(tmp_path)
    monkeypatch.setenv("COLUMNS", str(width))
    assert main(["status", "--store", store]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    # Table cells are whole words: one row per resource, each cell exactly its value.
    expected = [[r.kind, r.name, f"{r.info.summary_condition}=True", "Completed"] for r in resources]
    assert _table_rows(out) == expected
    # Every URI is on one line, whole (piped output is never hard-wrapped inside a URI).
    for res in resources:
        for uri in res.status.outputs.to_wire().values():
            assert len(uri) > 80
            assert any(line.endswith(uri) for line in lines), uri
    # Metrics: sorted, laid out in lines that fit, no entry split.
    rl_block = lines[lines.index("RLAIFRun/quickstart-rl"):]
    metric_lines = rl_block[rl_block.index("  metrics:") + 1:]
    metric_lines = metric_lines[:next((i for i, ln in enumerate(metric_lines) if not ln.startswith("    ")),
                                      len(metric_lines))]
    assert len(metric_lines) > 1 and all(len(ln) <= width for ln in metric_lines)
    entries = [e for line in metric_lines for e in line.strip().split("  ")]
    shown = {k: v for k, v in METRICS.items() if not k.endswith("Seconds") and "Ci" not in k}
    # A win rate and its interval are one entry: the interval is never on another line.
    expected = [f"{k}={v:g}" + (f" [{METRICS[k + 'CiLow']:g}, {METRICS[k + 'CiHigh']:g}]"
                                if "WinRate" in k else "") for k, v in sorted(shown.items())]
    assert entries == expected


def test_status_too_narrow_for_a_table_puts_the_summary_in_each_block(tmp_path, monkeypatch, capsys):
    store, resources = _stored(tmp_path)
    monkeypatch.setenv("COLUMNS", "50")
    assert main(["status", "--store", store]) == 0
    out = capsys.readouterr().out
    assert "│" not in out
    for res in resources:
        assert f"{res.display}\n  {res.info.summary_condition}=True  Completed\n" in out


def _report_store(tmp_path: Path) -> str:
    import json

    store, resources = _stored(tmp_path)
    report = next(r for r in resources if r.kind == "RLAIFRun").status.outputs.report
    summary_dir = Path(report[len("file://"):]).parent
    summary_dir.mkdir(parents=True)
    win = {"n": 10, "winRate": 0.498, "ciLow": 0.489, "ciHigh": 0.508, "hardWinRate": 0.5}
    (summary_dir / "summary.json").write_text(json.dumps({
        "name": "quickstart-rl",
        "winRates": {s: {p: win for p in ("rl_vs_start", "sl_vs_start", "rl_vs_sl")}
                     for s in ("harmless", "helpful")},
        "preferenceModel": {"heldOut": 8, "heldOutAccuracy": 0.625, "calibrationError": 0.083},
        "rl": {"algorithm": "rloo", "steps": 16, "rewardFirst": 0.584, "rewardMean": 0.56, "kl": 0.0123},
    }))
    return store


@pytest.mark.parametrize("width", WIDTHS)
def test_report_keeps_confidence_intervals_and_figures_on_one_line(tmp_path, monkeypatch, capsys, width):
    store = _report_store(tmp_path)
    monkeypatch.setenv("COLUMNS", str(width))
    assert main(["report", "quickstart-rl", "--store", store]) == 0
    out = capsys.readouterr().out
    monkeypatch.setenv("COLUMNS", "1000")
    assert main(["report", "quickstart-rl", "--store", store]) == 0
    words = set(capsys.readouterr().out.replace("│", " ").split())  # unwrapped: every word whole
    table_lines = [line for line in out.splitlines() if "│" in line]
    assert all(len(line) <= width for line in table_lines)
    broken = {w for line in table_lines for w in line.replace("│", " ").split()} - words
    assert not broken, f"words broken in table cells: {broken}"
    # The verdict comes first; every interval (its own and the table's six) is whole, on one line.
    verdict = " ".join(out.split("\n\n")[0].split("RL-CAI evaluation")[0].split())
    assert verdict.startswith("Too few prompts to show an effect on harmlessness (RL-CAI vs start 0.498, 95% CI")
    assert out.count("[0.489, 0.508]") == 7
    assert "0.584 → 0.560" in out
    assert any(line.startswith("report: ") and line.endswith("/evaluate/report.html") for line in out.splitlines())


def test_report_names_degenerate_responses_after_the_verdict(tmp_path, monkeypatch, capsys):
    import json

    store = _report_store(tmp_path)
    path = next(tmp_path.rglob("summary.json"))
    doc = json.loads(path.read_text())
    doc["degenerate"] = {"start": {"degenerate": 0, "responses": 16}, "rl": {"degenerate": 3, "responses": 16}}
    path.write_text(json.dumps(doc))
    monkeypatch.setenv("COLUMNS", "160")
    assert main(["report", "quickstart-rl", "--store", store]) == 0
    head = capsys.readouterr().out.split("RL-CAI evaluation")[0]
    assert head.index("Too few prompts") < head.index("Degenerate responses") and "3 of 16 RL-CAI" in head
    assert "start" not in head.split("Degenerate responses")[1]
