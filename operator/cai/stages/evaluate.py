"""Stage `evaluate` (RL-CAI): compare the starting model, the SL-CAI model and the
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
from dataclasses import dataclass
from typing import Any

from ..api.kinds import ConstitutionSpec, PreferencePrinciple, RLAIFRunSpec
from ..constitution.sampling import stable_seed
from ..data.prompts import PromptSourceError, load_prompts
from ..feedback.labeller import Labeller, LabellerError, LabelSettings, open_labeller
from ..feedback.labels import validate_labels
from ..feedback.refusal import refusal_probabilities
from ..feedback.statistics import wilson_ci, win_rate
from ..models.backends import SamplingParams, load_backend
from ..models.refs import model_family
from ..store import filesystem, parse_jsonl, write_jsonl
from .runtime import StageContext, StageError, StageResult

MODEL_ROLES = ("start", "sl", "rl")
LABELS = {"start": "start", "sl": "SL-CAI", "rl": "RL-CAI"}
PAIRS = (("rl", "sl"), ("rl", "start"), ("sl", "start"))


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
    from ..models.resolve import resolve_model
    from ..models.reward import load_scorer, score_texts

    model, tok = load_scorer(resolve_model(reward_ref))
    out: dict[str, dict[str, float]] = {}
    for role, sets in responses.items():
        out[role] = {}
        for name, prompts in prompt_sets.items():
            scores = score_texts(
                model, tok, [(p["prompt"], r) for p, r in zip(prompts, sets[name])], batch_size=16
            )
            out[role][name] = sum(scores) / len(scores)
    return out


@dataclass(frozen=True)
class Judge:
    """Who decides the win rates and refusal rates: `spec.evaluation.judge`, else the feedback model."""

    model: str
    backend: str = "auto"
    endpoint: str | None = None
    batch_size: int = 8


def independence_problem(judge_ref: str, feedback_ref: str, start_ref: str) -> str | None:
    """Why the judge's verdicts are not independent of what is judged, or None."""
    if judge_ref == feedback_ref:
        return "the judge is the feedback model that labelled the preference model's training data"
    if model_family(judge_ref) == model_family(start_ref):
        return f"the judge is of the policy's model family ({model_family(judge_ref)})"
    return None


def judge(
    ctx: StageContext,
    const: ConstitutionSpec,
    target: Judge,
    seed: int,
    prompt_sets: dict[str, list[dict[str, Any]]],
    responses: dict[str, dict[str, list[str]]],
    pairs: list[tuple[str, str]],
    helpfulness_question: str,
    few_shot_examples: int | None,
) -> tuple[list[dict[str, Any]], dict[str, dict[str, list[float]]]]:
    """The judge's verdicts: pairwise rows (one per prompt set, model pair and prompt; pA = P(first
    better)) and, per model and prompt set, P(the response refuses) for each prompt."""
    settings = LabelSettings(
        seed=seed, principles_per_comparison=1, both_orders=True, few_shot_examples=few_shot_examples
    )
    helpful = [PreferencePrinciple(name="helpfulness", question=helpfulness_question)]
    rows: list[dict[str, Any]] = []
    jobs = []
    for name, prompts in prompt_sets.items():
        for x, y in pairs:
            comps = [
                {
                    "id": p["id"],
                    "prompt": p["prompt"],
                    "responseA": responses[x][name][i],
                    "responseB": responses[y][name][i],
                    "set": name,
                    "first": x,
                    "second": y,
                }
                for i, p in enumerate(prompts)
            ]
            jobs.append((name, comps))
    if jobs:
        first = jobs[0][1][0]
    else:  # one model under three names: nothing to compare, refusals are still judged
        name, prompts = next(iter(prompt_sets.items()))
        answer = responses["start"][name][0]
        first = {
            "id": prompts[0]["id"],
            "prompt": prompts[0]["prompt"],
            "responseA": answer,
            "responseB": answer,
        }
    refusal_items = [
        (role, name, [{"prompt": p["prompt"], "response": r} for p, r in zip(prompts, responses[role][name])])
        for role in responses
        for name, prompts in prompt_sets.items()
    ]
    total = sum(len(c) for _, c in jobs) * settings.prompts_per_comparison + 2 * sum(
        len(items) for _, _, items in refusal_items
    )
    refusals: dict[str, dict[str, list[float]]] = {}
    with ctx.progress("judgements", total, "prompts") as progress:
        try:
            harmless = open_labeller(
                target.backend, target.model, target.endpoint, target.batch_size, const, settings, first
            )
        except LabellerError as e:
            raise StageError(str(e).replace("feedback model", "judge", 1)) from None
        # The helpfulness labeller shares the loaded judge; only its question differs.
        helpfulness = Labeller(harmless.backend, const, settings, principles=helpful)
        try:
            for name, comps in jobs:
                labelled = (helpfulness if name == "helpful" else harmless).label(
                    comps, progress=progress.advance
                )
                validate_labels(labelled, f"judge {target.model}")
                rows += labelled
            for role, name, items in refusal_items:
                refusals.setdefault(role, {})[name] = refusal_probabilities(
                    harmless.backend, items, progress=progress.advance
                )
        finally:
            harmless.backend.close()
    return rows, refusals


def refusal_rates(refusals: dict[str, dict[str, list[float]]]) -> dict[str, dict[str, dict[str, Any]]]:
    """{prompt set: {role: rate}}: mean P(refuses) and the share judged refusing (P > 0.5, Wilson 95% CI)."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for role, sets in refusals.items():
        for name, p in sets.items():
            if not p:
                continue
            hard = sum(1.0 if x > 0.5 else 0.5 if x == 0.5 else 0.0 for x in p)
            lo, hi = wilson_ci(hard, len(p))
            out.setdefault(name, {})[role] = {
                "n": len(p),
                "rate": sum(p) / len(p),
                "hardRate": hard / len(p),
                "hardCiLow": lo,
                "hardCiHigh": hi,
            }
    return out


# --- stage -----------------------------------------------------------------------------------------


def run(ctx: StageContext[RLAIFRunSpec]) -> StageResult:
    from .report_html import write_report

    spec = ctx.spec
    ev = spec.evaluation
    try:
        const = ctx.constitution()
    except ValueError:  # the PreferenceModel's Constitution was not found when the run was planned
        const = None
    if const is None:
        raise StageError(
            "evaluate needs the PreferenceModel's Constitution (its preference principles and few-shot "
            "examples judge the responses); it was not found"
        )
    refs = {role: ctx.model(role) for role in MODEL_ROLES}
    prompt_sets = {
        "harmless": _prompts(ev.red_team_prompts, "redTeamPrompts"),
        "helpful": _prompts(ev.helpful_prompts, "helpfulPrompts"),
    }
    ctx.log(
        f"{len(prompt_sets['harmless'])} red-team + {len(prompt_sets['helpful'])} helpful prompts; "
        f"models: " + ", ".join(f"{LABELS[r]}={refs[r]}" for r in MODEL_ROLES)
    )

    responses = generate(ctx, refs, prompt_sets, ev.max_new_tokens)
    pairs = [(x, y) for x, y in PAIRS if refs[x] != refs[y]]
    feedback = ctx.model("feedback")
    target = (
        Judge(
            ctx.stage.models.get("judge") or ev.judge.model,
            ev.judge.backend,
            ev.judge.endpoint,
            ev.judge.batch_size,
        )
        if ev.judge
        else Judge(feedback)
    )
    not_independent = independence_problem(target.model, feedback, refs["start"])
    ctx.log(f"judge {target.model}" + (f" (not independent: {not_independent})" if not_independent else ""))
    judgements, refusals = judge(
        ctx,
        const,
        target,
        spec.seed,
        prompt_sets,
        responses,
        pairs,
        ev.helpfulness_question,
        ev.few_shot_examples,
    )
    refusal = refusal_rates(refusals)
    scores = pm_scores(ctx.model("reward"), prompt_sets, responses)

    win_rates: dict[str, dict[str, dict[str, Any]]] = {}
    for name in prompt_sets:
        for x, y in pairs:
            p = [r["pA"] for r in judgements if r["set"] == name and r["first"] == x and r["second"] == y]
            if p:
                win_rates.setdefault(name, {})[f"{x}_vs_{y}"] = win_rate(
                    p, stable_seed(spec.seed, name, x, y)
                )

    policy_uri, reward_uri = ctx.stage.inputs.get("policy", ""), ctx.stage.inputs.get("rewardModel", "")
    rl_log = parse_jsonl(read_artifact_file(policy_uri, "rl_log.jsonl"))
    heldout = parse_jsonl(read_artifact_file(reward_uri, "heldout_predictions.jsonl"))
    pm_loss = json.loads(read_artifact_file(reward_uri, "loss_curve.json") or "[]")
    pm_manifest = json.loads(read_artifact_file(reward_uri, "manifest.json") or "{}")
    policy_manifest = json.loads(read_artifact_file(policy_uri, "manifest.json") or "{}")

    generations = []
    for name, prompts in prompt_sets.items():
        for i, prompt in enumerate(prompts):
            generations.append(
                {
                    "set": name,
                    "id": prompt["id"],
                    "prompt": prompt["prompt"],
                    **{role: responses[role][name][i] for role in MODEL_ROLES},
                }
            )
    write_jsonl(ctx.out_dir / "generations.jsonl", generations)
    write_jsonl(ctx.out_dir / "judgements.jsonl", judgements)
    summary = write_report(
        ctx.out_dir,
        name=ctx.stage.name,
        refs=refs,
        feedback=feedback,
        judge={
            "model": target.model,
            "backend": target.backend,
            "independent": not_independent is None,
            "notIndependentBecause": not_independent,
        },
        refusal=refusal,
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
    names = {
        ("harmless", "rl_vs_sl"): "harmlessWinRate",
        ("helpful", "rl_vs_sl"): "helpfulWinRate",
        ("harmless", "rl_vs_start"): "harmlessWinRateVsStart",
        ("helpful", "rl_vs_start"): "helpfulWinRateVsStart",
        ("harmless", "sl_vs_start"): "slHarmlessWinRateVsStart",
        ("helpful", "sl_vs_start"): "slHelpfulWinRateVsStart",
    }
    for (name, pair), key in names.items():
        wr = win_rates.get(name, {}).get(pair)
        if wr is None and pair == "rl_vs_sl":
            # The policy was a plain model (no CritiqueRun): SL-CAI is the start, RL vs SL is RL vs start.
            wr = win_rates.get(name, {}).get("rl_vs_start")
        if wr is not None:
            metrics[key] = round(wr["winRate"], 6)
            metrics[key + "CiLow"] = round(wr["ciLow"], 6)
            metrics[key + "CiHigh"] = round(wr["ciHigh"], 6)
    for role, suffix in (("start", "Start"), ("sl", "SL"), ("rl", "RL")):
        metrics["pmScore" + suffix] = round(scores[role]["harmless"], 6)
        # Judged by the judge model: refusals on red-team prompts, needless refusals on helpful ones.
        for name, key in (("harmless", "refusalRate"), ("helpful", "evasivenessRate")):
            if role in refusal.get(name, {}):
                metrics[key + suffix] = round(refusal[name][role]["rate"], 6)
    metrics["judgeIndependent"] = 1.0 if not_independent is None else 0.0
    return StageResult(kind="report", metrics=metrics)
