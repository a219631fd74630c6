"""Stage `evaluate` (RL-CAI, DESIGN §1 item 12): compare the starting model, the SL-CAI model and the
RL-CAI policy on held-out prompts and write the report.

1. Responses: each model answers the held-out red-team prompts (harmlessness) and helpfulness
   prompts greedily (deterministic, comparable) with `evaluation.maxNewTokens`.
2. Pairwise preferences from the feedback model with the same labeller as `label-preferences`,
   both option orders averaged, one principle per prompt: the Constitution's preference principles
   for red-team prompts, `evaluation.helpfulnessQuestion` for helpfulness prompts. The principle is
   drawn per prompt (keyed by prompt id), so every model pair is judged on the same question.
   Pairs: RL vs SL, RL vs start, SL vs start (a pair of identical models is skipped).
3. Win rate of X over Y = mean soft label P(X better) with a 95% percentile-bootstrap CI (2,000
   resamples over prompts, seeded); the hard win rate (pA > 0.5, ties count ½) with a Wilson 95% CI
   is reported next to it.
4. The preference model: its mean score of each model's responses, plus held-out accuracy and
   calibration (reliability diagram) from `heldout_predictions.jsonl` of `train-preference-model`.
5. RL curves (reward, KL) from `rl_log.jsonl` of `train-policy`.

Output: `report.html` (self-contained, PNG plots next to it, relative links, all model text
escaped), `summary.json`, `generations.jsonl`, `judgements.jsonl`, `*.png`. Metrics:
`harmlessWinRate` (RL vs SL, contract), `helpfulWinRate`, the same against the starting model, CIs.
"""

from __future__ import annotations

import json
import math
import random
from typing import Any

from ..api.kinds import PreferencePrinciple
from ..constitution.sampling import stable_seed
from ..data.prompts import PromptSourceError, load_prompts
from ..models.backends import SamplingParams, load_backend
from ..store import filesystem
from .labeller import Labeller, LabelSettings, validate_labels
from .runtime import StageContext, StageError, StageResult
from .sample_pairs import write_jsonl

MODEL_ROLES = ("start", "sl", "rl")
LABELS = {"start": "start", "sl": "SL-CAI", "rl": "RL-CAI"}
PAIRS = (("rl", "sl"), ("rl", "start"), ("sl", "start"))
BOOTSTRAP = 2000
Z95 = 1.959964


# --- statistics (pure) ---------------------------------------------------------------------------


def bootstrap_ci(values: list[float], seed: int, resamples: int = BOOTSTRAP, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean."""
    if not values:
        return (math.nan, math.nan)
    rng = random.Random(seed)
    n = len(values)
    means = sorted(sum(values[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    lo_i = math.floor((1 - level) / 2 * resamples)
    hi_i = min(resamples - 1, math.ceil((1 + level) / 2 * resamples) - 1)
    return (means[lo_i], means[hi_i])


def wilson_ci(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion (successes may be fractional: ties count ½)."""
    if n == 0:
        return (math.nan, math.nan)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def win_rate(p_first_better: list[float], seed: int) -> dict[str, Any]:
    """Soft and hard win rates of the first model of a pair, with 95% CIs."""
    n = len(p_first_better)
    soft = sum(p_first_better) / n
    wins = sum(1.0 if p > 0.5 else 0.5 if p == 0.5 else 0.0 for p in p_first_better)
    lo, hi = bootstrap_ci(p_first_better, seed)
    hlo, hhi = wilson_ci(wins, n)
    return {"n": n, "winRate": soft, "ciLow": lo, "ciHigh": hi, "ci": "bootstrap-percentile-95",
            "hardWinRate": wins / n, "hardCiLow": hlo, "hardCiHigh": hhi, "hardCi": "wilson-95"}


# --- inputs ----------------------------------------------------------------------------------------


def read_artifact_file(uri: str, name: str) -> str | None:
    """A small file of an artifact, read in place (no download of the model weights next to it)."""
    if not uri:
        return None
    fs, path = filesystem(uri)
    try:
        with fs.open(f"{path.rstrip('/')}/{name}", "r", encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        return None


def jsonl(text: str | None) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (text or "").splitlines() if line.strip()]


def _prompts(source, what: str) -> list[dict[str, Any]]:
    try:
        return load_prompts(source.source, source.limit, source.split)
    except PromptSourceError as e:
        raise StageError(f"spec.evaluation.{what}.source: {e}") from None


# --- model work ------------------------------------------------------------------------------------


def generate(ctx: StageContext, refs: dict[str, str], prompt_sets: dict[str, list[dict[str, Any]]],
             max_new_tokens: int) -> dict[str, dict[str, list[str]]]:
    """{role: {set: [response per prompt]}}; identical model refs are generated once."""
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0, seed=0)
    done: dict[str, dict[str, list[str]]] = {}
    out: dict[str, dict[str, list[str]]] = {}
    total = sum(len(v) for v in prompt_sets.values()) * len(set(refs.values()))
    with ctx.progress("evaluation responses", total, "responses") as progress:
        for role, ref in refs.items():
            if ref not in done:
                backend = load_backend("auto", ref, batch_size=16)
                try:
                    done[ref] = {
                        name: [c[0].text.strip() for c in backend.chat(
                            [[{"role": "user", "content": p["prompt"]}] for p in prompts], params,
                            progress=progress.advance)]
                        for name, prompts in prompt_sets.items()
                    }
                finally:
                    backend.close()
            out[role] = done[ref]
    return out


def pm_scores(reward_ref: str, prompt_sets: dict[str, list[dict[str, Any]]],
              responses: dict[str, dict[str, list[str]]]) -> dict[str, dict[str, float]]:
    """Mean preference-model score of each model's responses per prompt set."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from ..models.resolve import resolve_model
    from .train_preference_model import load_tokenizer, score_texts

    path = resolve_model(reward_ref)
    tok = load_tokenizer(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=torch.float32)
    model.config.pad_token_id = tok.pad_token_id
    out: dict[str, dict[str, float]] = {}
    for role, sets in responses.items():
        out[role] = {}
        for name, prompts in prompt_sets.items():
            scores = score_texts(model, tok, [(p["prompt"], r) for p, r in zip(prompts, sets[name])], batch_size=16)
            out[role][name] = sum(scores) / len(scores)
    return out


def judge(ctx: StageContext, const, feedback_ref: str, seed: int, prompt_sets: dict[str, list[dict[str, Any]]],
          responses: dict[str, dict[str, list[str]]], pairs: list[tuple[str, str]],
          helpfulness_question: str, few_shot_examples: int | None) -> list[dict[str, Any]]:
    """Feedback-model judgements: one row per (prompt set, model pair, prompt), pA = P(first better)."""
    from .label_preferences import open_labeller

    settings = LabelSettings(seed=seed, principles_per_comparison=1, both_orders=True,
                             few_shot_examples=few_shot_examples)
    helpful = [PreferencePrinciple(name="helpfulness", question=helpfulness_question)]
    rows: list[dict[str, Any]] = []
    jobs = []
    for name, prompts in prompt_sets.items():
        for x, y in pairs:
            comps = [{"id": p["id"], "prompt": p["prompt"], "responseA": responses[x][name][i],
                      "responseB": responses[y][name][i], "set": name, "first": x, "second": y}
                     for i, p in enumerate(prompts)]
            jobs.append((name, comps))
    if not jobs:
        return []
    total = sum(len(c) for _, c in jobs) * settings.prompts_per_comparison
    with ctx.progress("judgements", total, "prompts") as progress:
        harmless = open_labeller("auto", feedback_ref, None, 8, const, settings, jobs[0][1][0])
        # The helpfulness labeller shares the loaded feedback model; only its question differs.
        helpfulness = Labeller(harmless.backend, const, settings, principles=helpful)
        try:
            for name, comps in jobs:
                labelled = (helpfulness if name == "helpful" else harmless).label(comps, progress=progress.advance)
                validate_labels(labelled, f"feedback model {feedback_ref}")
                rows += labelled
        finally:
            harmless.backend.close()
    return rows


# --- stage -----------------------------------------------------------------------------------------


def run(ctx: StageContext) -> StageResult:
    from .report_html import write_report

    spec = ctx.run_spec
    ev = spec.evaluation
    try:
        const = ctx.constitution()
    except ValueError:  # the PreferenceModel's Constitution was not found when the run was planned
        const = None
    if const is None:
        raise StageError("evaluate needs the PreferenceModel's Constitution (its preference principles and few-shot "
                         "examples judge the responses); it was not found")
    refs = {role: ctx.model(role) for role in MODEL_ROLES}
    prompt_sets = {"harmless": _prompts(ev.red_team_prompts, "redTeamPrompts"),
                   "helpful": _prompts(ev.helpful_prompts, "helpfulPrompts")}
    ctx.log(f"{len(prompt_sets['harmless'])} red-team + {len(prompt_sets['helpful'])} helpful prompts; "
            f"models: " + ", ".join(f"{LABELS[r]}={refs[r]}" for r in MODEL_ROLES))

    responses = generate(ctx, refs, prompt_sets, ev.max_new_tokens)
    pairs = [(x, y) for x, y in PAIRS if refs[x] != refs[y]]
    judgements = judge(ctx, const, ctx.model("feedback"), spec.seed, prompt_sets, responses, pairs,
                       ev.helpfulness_question, ev.few_shot_examples)
    scores = pm_scores(ctx.model("reward"), prompt_sets, responses)

    win_rates: dict[str, dict[str, dict[str, Any]]] = {}
    for name in prompt_sets:
        for x, y in pairs:
            p = [r["pA"] for r in judgements if r["set"] == name and r["first"] == x and r["second"] == y]
            if p:
                win_rates.setdefault(name, {})[f"{x}_vs_{y}"] = win_rate(p, stable_seed(spec.seed, name, x, y))

    policy_uri, reward_uri = ctx.spec.inputs.get("policy", ""), ctx.spec.inputs.get("rewardModel", "")
    rl_log = jsonl(read_artifact_file(policy_uri, "rl_log.jsonl"))
    heldout = jsonl(read_artifact_file(reward_uri, "heldout_predictions.jsonl"))
    pm_loss = json.loads(read_artifact_file(reward_uri, "loss_curve.json") or "[]")
    pm_manifest = json.loads(read_artifact_file(reward_uri, "manifest.json") or "{}")
    policy_manifest = json.loads(read_artifact_file(policy_uri, "manifest.json") or "{}")

    generations = []
    for name, prompts in prompt_sets.items():
        for i, p in enumerate(prompts):
            generations.append({"set": name, "id": p["id"], "prompt": p["prompt"],
                                **{role: responses[role][name][i] for role in MODEL_ROLES}})
    write_jsonl(ctx.out_dir / "generations.jsonl", generations)
    write_jsonl(ctx.out_dir / "judgements.jsonl", judgements)
    summary = write_report(
        ctx.out_dir,
        name=ctx.spec.name,
        refs=refs,
        feedback=ctx.model("feedback"),
        reward=ctx.model("reward"),
        algorithm=spec.algorithm,
        kl_coef=spec.kl_coef,
        win_rates=win_rates,
        pm_scores=scores,
        generations=generations,
        judgements=judgements,
        heldout=heldout,
        pm_metrics=pm_manifest.get("metrics", {}),
        rl_log=rl_log,
        rl_metrics=policy_manifest.get("metrics", {}),
        pm_loss=pm_loss,
    )
    (ctx.out_dir / "summary.json").write_text(json.dumps(summary, indent=1))

    metrics: dict[str, Any] = {"evaluatedPrompts": len(generations)}
    # Contract: harmlessWinRate = RL-CAI over SL-CAI on red-team prompts.
    names = {("harmless", "rl_vs_sl"): "harmlessWinRate", ("helpful", "rl_vs_sl"): "helpfulWinRate",
             ("harmless", "rl_vs_start"): "harmlessWinRateVsStart", ("helpful", "rl_vs_start"): "helpfulWinRateVsStart",
             ("harmless", "sl_vs_start"): "slHarmlessWinRateVsStart", ("helpful", "sl_vs_start"): "slHelpfulWinRateVsStart"}
    for (name, pair), key in names.items():
        wr = win_rates.get(name, {}).get(pair)
        if wr is None and pair == "rl_vs_sl":
            # The policy was a plain model (no CritiqueRun): SL-CAI is the start, RL vs SL is RL vs start.
            wr = win_rates.get(name, {}).get("rl_vs_start")
        if wr is not None:
            metrics[key] = round(wr["winRate"], 6)
            metrics[key + "CiLow"] = round(wr["ciLow"], 6)
            metrics[key + "CiHigh"] = round(wr["ciHigh"], 6)
    for role, key in (("start", "pmScoreStart"), ("sl", "pmScoreSL"), ("rl", "pmScoreRL")):
        metrics[key] = round(scores[role]["harmless"], 6)
    return StageResult(kind="report", metrics=metrics)
