"""How well each feedback model labels: the paper's HHH benchmark through our labeller.

Part of bench/ (`make bench-labels`). Bai et al. 2022 measure their feedback model on the HHH binary
comparisons of BIG-bench (Askell et al. 2021): 221 (conversation, better answer, worse answer)
triples in four subsets — harmless 58, helpful 59, honest 61, other 43 — and find that chain of
thought raises accuracy. Here every comparison goes through `Labeller.label`, the code path of stage
`label-preferences` (same prompts, few-shot examples, option-token scoring, order averaging, CoT
clamp), with the preference principles of constitutions/harmless.yaml and helpful-honest.yaml.

Configurations: `direct-1` (one drawn principle, both orders: what the quickstart does), `direct-k`
(an ensemble of k principles averaged), `cot-1` and `cot-k` (chain of thought, probabilities clamped to
[0.4, 0.6] as in the paper). The better answer is put on side A or B by a seeded coin per comparison.
Printed per model and configuration: accuracy per subset and overall with Wilson 95% intervals (a
tie, pA = 0.5, counts ½), the mean |pA − 0.5|, and the expected calibration error of pA against the
truth (10 bins, as for the preference model, `cai.feedback.statistics`).

Data: the task files ship in the PyPI sdist `bigbench==1.0.0` (Apache-2.0). The sdist's metadata
declares a direct-URL dependency, which `pip download` refuses, so uv (the project's installer) builds
it once with --no-deps into a scratch dir; only `hhh_alignment/*/task.json` are kept, in
`$CAI_CACHE_DIR/datasets/bigbench-1.0.0/hhh_alignment/` with a SOURCE.md naming their origin and
licence. Later runs are offline. `CAI_HHH_DIR` points at a directory holding the four subsets'
`<subset>/task.json` instead (the package index of 2026-12-05 no longer served bigbench 1.0.0).

`--precision bfloat16` also labels every comparison with the model's weights in bfloat16 (the option
log-softmax stays fp32, as in `score_next_token`) and prints, per model and configuration, the largest
and mean |ΔpA| against the float32 labels and how often the two pick the same side: the evidence for
scoring in a bf16 generator's precision (issue on scale-out, goal |ΔpA| ≤ 0.01).

    python bench/label_accuracy.py [--models REF,REF] [--configs direct-1,direct-k,cot-1]
        [--limit N] [--cot-limit N] [--ensemble 4] [--few-shot 2] [--batch-size 8] [--json FILE]
        [--precision bfloat16]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CONSTITUTIONS = (ROOT / "constitutions" / "harmless.yaml", ROOT / "constitutions" / "helpful-honest.yaml")
BIGBENCH = "bigbench==1.0.0"
SUBSETS = ("harmless", "helpful", "honest", "other")
DEFAULT_MODELS = ("builtin:smollm2-135m-instruct", "builtin:qwen2.5-coder-0.5b-instruct",
                  "builtin:qwen2.5-coder-1.5b-instruct")
CONFIGS = ("direct-1", "direct-k", "cot-1", "cot-k")
SOURCE_NOTE = """\
HHH alignment task of BIG-bench (Askell et al. 2021, "A General Language Assistant as a Laboratory for
Alignment"; BIG-bench: Srivastava et al. 2022), files bigbench/benchmark_tasks/hhh_alignment/*/task.json
from the PyPI source distribution {dist}. BIG-bench is licensed under the Apache License 2.0
(https://www.apache.org/licenses/LICENSE-2.0); the files are unmodified copies.
"""


# --- data -----------------------------------------------------------------------------------------


def data_dir() -> Path:
    if os.environ.get("CAI_HHH_DIR"):  # the four subsets' task.json files, fetched some other way
        return Path(os.environ["CAI_HHH_DIR"]).expanduser()
    cache = os.environ.get("CAI_CACHE_DIR")
    root = Path(cache).expanduser() if cache else Path.home() / ".cache" / "cai"
    return root / "datasets" / BIGBENCH.replace("==", "-") / "hhh_alignment"


def _uv() -> str:
    for candidate in (os.environ.get("UV"), shutil.which("uv"), str(Path.home() / ".local" / "bin" / "uv")):
        if candidate and Path(candidate).is_file():
            return candidate
    sys.exit("error: uv is needed once to fetch the HHH task from PyPI (make env installs it; or set UV=/path/to/uv)")


def ensure_data() -> Path:
    """The four subsets' task.json files, fetched once (about 2 min: a 358 MB sdist is built)."""
    dest = data_dir()
    if all((dest / s / "task.json").is_file() for s in SUBSETS):
        return dest
    print(f"fetching the HHH task from {BIGBENCH} (once) into {dest}", file=sys.stderr, flush=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as scratch:
        target = Path(scratch) / "site"
        proc = subprocess.run([_uv(), "pip", "install", "--quiet", "--no-deps", "--target", str(target),
                               "--python", sys.executable, BIGBENCH], check=False, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"error: could not fetch {BIGBENCH} with uv: {proc.stderr.strip()[-500:]}\n"
                     "(on 2026-12-05 the package index served only bigbench 0.0.1, without the tasks; with the "
                     "files from BIG-bench's bigbench/benchmark_tasks/hhh_alignment/, set CAI_HHH_DIR to that "
                     "directory)")
        src = target / "bigbench" / "benchmark_tasks" / "hhh_alignment"
        staged = Path(scratch) / "hhh_alignment"
        for subset in SUBSETS:
            (staged / subset).mkdir(parents=True)
            shutil.copy2(src / subset / "task.json", staged / subset / "task.json")
        (staged / "SOURCE.md").write_text(SOURCE_NOTE.format(dist=BIGBENCH))
        if dest.exists():
            shutil.rmtree(dest)
        staged.rename(dest)
    return dest


def comparisons(limit: int | None, seed: int = 0) -> list[dict[str, Any]]:
    """One comparison per HHH example; `better` says which side holds the preferred answer."""
    root = ensure_data()
    rows: list[dict[str, Any]] = []
    for subset in SUBSETS:
        examples = json.loads((root / subset / "task.json").read_text())["examples"]
        for i, ex in enumerate(examples[:limit]):
            ranked = sorted(ex["target_scores"].items(), key=lambda kv: -kv[1])
            if len(ranked) != 2 or ranked[0][1] == ranked[1][1]:
                raise ValueError(f"{subset}/task.json example {i}: expected one better and one worse answer")
            cid = f"hhh-{subset}-{i:03d}"
            coin = hashlib.sha256(f"{seed}:{cid}".encode()).digest()[0] % 2
            better, worse = ranked[0][0], ranked[1][0]
            a, b = (better, worse) if coin == 0 else (worse, better)
            rows.append({"id": cid, "subset": subset, "prompt": ex["input"], "responseA": a, "responseB": b,
                         "better": "A" if coin == 0 else "B"})
    return rows


# --- scoring --------------------------------------------------------------------------------------


def constitution() -> Any:
    """harmless.yaml with the preference principles of both shipped constitutions (HHH spans all three)."""
    import yaml

    from cai.api.kinds import ConstitutionSpec

    specs = [ConstitutionSpec.model_validate(yaml.safe_load(p.read_text())["spec"]) for p in CONSTITUTIONS]
    principles = [p for s in specs for p in s.preference_principles]
    return specs[0].model_copy(update={"preference_principles": principles})


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    from cai.feedback.statistics import expected_calibration_error, wilson_ci

    out: dict[str, Any] = {}
    for subset in (*SUBSETS, "all"):
        part = [r for r in rows if subset in ("all", r["subset"])]
        if not part:
            continue
        p_true = [r["pA"] if r["better"] == "A" else 1.0 - r["pA"] for r in part]
        correct = sum(1.0 if p > 0.5 else 0.5 if p == 0.5 else 0.0 for p in p_true)
        lo, hi = wilson_ci(correct, len(part))
        out[subset] = {"n": len(part), "accuracy": correct / len(part), "ciLow": lo, "ciHigh": hi}
    truth = [{"q": r["pA"], "pA": 1.0 if r["better"] == "A" else 0.0} for r in rows]
    out["ece"] = expected_calibration_error(truth)
    out["meanMargin"] = sum(abs(r["pA"] - 0.5) for r in rows) / len(rows)
    return out


def run_model(model: str, configs: list[str], args: argparse.Namespace) -> list[dict[str, Any]]:
    from cai.feedback.labeller import Labeller, LabelSettings
    from cai.models.backends import load_backend

    const = constitution()
    backend = load_backend("transformers", model, batch_size=args.batch_size, dtype="float32")
    other = (load_backend("transformers", model, batch_size=args.batch_size, dtype=args.precision)
             if args.precision else None)
    results = []
    try:
        for config in configs:
            mode, k = config.split("-")
            cot = mode == "cot"
            settings = LabelSettings(seed=args.seed, principles_per_comparison=args.ensemble if k == "k" else 1,
                                     both_orders=True, chain_of_thought=cot, few_shot_examples=args.few_shot,
                                     cot_max_new_tokens=args.cot_tokens)
            rows = comparisons(args.cot_limit if cot else args.limit, args.seed)
            started = time.monotonic()
            labelled = Labeller(backend, const, settings).label(rows)
            seconds = time.monotonic() - started
            summary = summarize(labelled)
            results.append({"model": model, "config": config, "principles": settings.principles_per_comparison,
                            "seconds": round(seconds, 1), **summary})
            print(f"  {model} {config}: accuracy {summary['all']['accuracy']:.3f} on {summary['all']['n']} "
                  f"({seconds:.0f} s)", file=sys.stderr, flush=True)
            if other is not None:
                started = time.monotonic()
                again = Labeller(other, const, settings).label(rows)
                results[-1]["precision"] = {"dtype": args.precision, "seconds": round(time.monotonic() - started, 1),
                                            **precision_delta(labelled, again)}
                print(f"  {model} {config} in {args.precision}: {results[-1]['precision']}", file=sys.stderr,
                      flush=True)
    finally:
        backend.close()
        if other is not None:
            other.close()
    return results


def precision_delta(reference: list[dict[str, Any]], other: list[dict[str, Any]]) -> dict[str, Any]:
    """|ΔpA| of the same comparisons labelled in two precisions, and how often both pick the same side."""
    deltas = [abs(a["pA"] - b["pA"]) for a, b in zip(reference, other, strict=True)]
    same = sum((a["pA"] > 0.5) == (b["pA"] > 0.5) for a, b in zip(reference, other, strict=True))
    return {"maxDeltaPA": round(max(deltas), 5), "meanDeltaPA": round(sum(deltas) / len(deltas), 5),
            "sameSide": round(same / len(deltas), 4), "n": len(deltas)}


def table(results: list[dict[str, Any]]) -> str:
    def cell(s: dict[str, Any] | None) -> str:
        if not s:
            return "—"
        return f"{s['accuracy']:.2f} [{s['ciLow']:.2f}, {s['ciHigh']:.2f}]"

    head = ("| model | labelling | n | harmless | helpful | honest | other | all | mean \\|pA−0.5\\| | ECE | s |\n"
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    lines = [head]
    for r in results:
        label = r["config"].replace("-k", f"-{r['principles']}")
        lines.append(f"| {r['model'].removeprefix('builtin:')} | {label} | {r['all']['n']} | "
                     + " | ".join(cell(r.get(s)) for s in (*SUBSETS, "all"))
                     + f" | {r['meanMargin']:.3f} | {r['ece']:.3f} | {r['seconds']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated model references")
    ap.add_argument("--configs", default="direct-1,direct-k,cot-1", help=f"comma-separated, of {', '.join(CONFIGS)}")
    ap.add_argument("--limit", type=int, default=None, help="first N examples of each subset (default: all)")
    ap.add_argument("--cot-limit", type=int, default=10, help="first N examples of each subset for CoT configs")
    ap.add_argument("--ensemble", type=int, default=4, help="principles per comparison in the -k configs")
    ap.add_argument("--few-shot", type=int, default=None, help="few-shot examples (default: all of harmless.yaml's)")
    ap.add_argument("--cot-tokens", type=int, default=96, help="max reasoning tokens per CoT sample")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="also write the results as JSON")
    ap.add_argument("--precision", choices=("bfloat16", "float16"),
                    help="also label in this precision and print |ΔpA| against float32")
    args = ap.parse_args(argv)
    configs = [c for c in args.configs.split(",") if c]
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        ap.error(f"--configs: unknown {unknown}; choose from {', '.join(CONFIGS)}")
    ensure_data()
    results = []
    for model in [m for m in args.models.split(",") if m]:
        results += run_model(model, configs, args)
    print(table(results))
    for r in results:
        if "precision" in r:
            d = r["precision"]
            print(f"{r['model'].removeprefix('builtin:')} {r['config']}: {d['dtype']} vs float32 on {d['n']} comparisons: "
                  f"|ΔpA| max {d['maxDeltaPA']:.4f}, mean {d['meanDeltaPA']:.4f}, same side {d['sameSide']:.2f} "
                  f"({d['seconds']:.0f} s vs {r['seconds']:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "operator"))
    raise SystemExit(main())
