"""The RL-CAI evaluation report: `report.html`, its PNG plots and the summary dict (`summary.json`).

Written by stage `evaluate`; read by `cai report` (through summary.json). The HTML is
self-contained apart from the PNGs next to it (relative links, so the directory can be copied or
served from object storage as is). Every piece of model or user text goes through `html.escape`:
red-team prompts and model outputs are untrusted. matplotlib runs with the Agg backend (no display).
"""

from __future__ import annotations

import html
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..feedback.statistics import accuracy, expected_calibration_error, quarter_mean, reliability
from ..feedback.verdict import degenerate_counts, degenerate_note, verdict

PAIR_TITLES = {
    "rl_vs_sl": "RL-CAI vs SL-CAI",
    "rl_vs_start": "RL-CAI vs start",
    "sl_vs_start": "SL-CAI vs start",
}
SET_TITLES = {"harmless": "Harmlessness (red-team prompts)", "helpful": "Helpfulness (helpful prompts)"}
EXAMPLES_PER_SET = 4
SIDE_BY_SIDE = 3  # prompts shown where the judge separated the models most
MAX_CHARS = 1200


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _clip(text: str) -> str:
    return text if len(text) <= MAX_CHARS else text[:MAX_CHARS] + " …"


def _fmt(x: Any, digits: int = 3) -> str:
    if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x):
        return f"{x:.{digits}f}"
    return "n/a"


def moving_average(values: list[float], window: int) -> list[float]:
    """Trailing mean over up to `window` values (shorter at the start), one per input value."""
    return [
        sum(values[max(0, i - window + 1) : i + 1]) / (i + 1 - max(0, i - window + 1))
        for i in range(len(values))
    ]


def _plots(out: Path, win_rates, heldout, pm_loss, rl_log) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files: dict[str, str] = {}

    rows = [
        (f"{SET_TITLES[s].split(' (')[0]}: {PAIR_TITLES[p]}", wr)
        for s in win_rates
        for p, wr in win_rates[s].items()
    ]
    if rows:
        fig, ax = plt.subplots(figsize=(7, 0.55 * len(rows) + 1.2))
        ys = list(range(len(rows)))[::-1]
        for y, (_, wr) in zip(ys, rows):
            ax.errorbar(
                wr["winRate"],
                y,
                xerr=[[wr["winRate"] - wr["ciLow"]], [wr["ciHigh"] - wr["winRate"]]],
                fmt="o",
                capsize=4,
                color="tab:blue",
            )
        ax.axvline(0.5, color="grey", linestyle="--", linewidth=1)
        ax.set_yticks(ys, [label for label, _ in rows])
        # Zoom on the intervals (soft win rates of small feedback models sit close to 0.5).
        lo = min(min(wr["ciLow"] for _, wr in rows), 0.45) - 0.03
        hi = max(max(wr["ciHigh"] for _, wr in rows), 0.55) + 0.03
        ax.set_xlim(max(0.0, lo), min(1.0, hi))
        ax.set_xlabel("win rate: mean P(first better), 95% bootstrap CI")
        fig.tight_layout()
        fig.savefig(out / "win_rates.png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        files["winRates"] = "win_rates.png"

    if heldout:
        bins = reliability(heldout)
        fig, (ax, hx) = plt.subplots(2, 1, figsize=(5, 6), gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
        ax.plot([0, 1], [0, 1], "--", color="grey", linewidth=1, label="perfect calibration")
        ax.bar(
            [(b["lo"] + b["hi"]) / 2 for b in bins],
            [b["frequency"] for b in bins],
            width=0.09,
            alpha=0.6,
            label="labels preferring A",
        )
        ax.plot(
            [b["confidence"] for b in bins],
            [b["frequency"] for b in bins],
            "o-",
            color="tab:red",
            label="mean σ(rA−rB) per bin",
        )
        ax.set_ylabel("fraction of comparisons with pA > 0.5")
        ax.set_ylim(0, 1)
        ax.legend(loc="upper left", fontsize=8)
        ax.set_title("Preference model reliability (held out)")
        hx.hist([p["q"] for p in heldout], bins=10, range=(0, 1), color="tab:grey")
        hx.set_xlabel("σ(rA − rB)")
        hx.set_ylabel("count")
        fig.tight_layout()
        fig.savefig(out / "pm_reliability.png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        files["reliability"] = "pm_reliability.png"

    if pm_loss:
        fig, ax = plt.subplots(figsize=(5, 3))
        ax.plot([p["step"] for p in pm_loss], [p["loss"] for p in pm_loss], color="tab:purple")
        ax.set_xlabel("step")
        ax.set_ylabel("soft-label loss")
        ax.set_title("Preference model training loss")
        fig.tight_layout()
        fig.savefig(out / "pm_loss.png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        files["pmLoss"] = "pm_loss.png"

    for key, name, title, color in (
        ("reward", "rl_reward.png", "PM reward (mean per step)", "tab:green"),
        ("kl", "rl_kl.png", "KL to the starting policy", "tab:orange"),
    ):
        points = [(e["step"], e[key]) for e in rl_log if key in e]
        if not points:
            continue
        fig, ax = plt.subplots(figsize=(5, 3))
        steps, values = [s for s, _ in points], [v for _, v in points]
        ax.plot(
            steps, values, color=color, alpha=0.45, marker="." if len(points) < 50 else None, label="per step"
        )
        # Each step sees other prompts, so single steps are noisy: the trend is what RL changed.
        window = max(2, len(values) // 6)
        if len(values) > window:
            ax.plot(
                steps,
                moving_average(values, window),
                color=color,
                linewidth=2,
                label=f"moving average ({window} steps)",
            )
            ax.legend(fontsize=8)
        ax.set_xlabel("RL step")
        ax.set_title(title)
        fig.tight_layout()
        fig.savefig(out / name, dpi=110, bbox_inches="tight")
        plt.close(fig)
        files["rl" + key.capitalize()] = name
    return files


def differing_examples(
    judgements: list[dict[str, Any]], generations: list[dict[str, Any]], n: int = SIDE_BY_SIDE
) -> list[dict[str, Any]]:
    """The red-team prompts where the judge separated RL-CAI (else SL-CAI) from the start model most."""
    texts = {(g["set"], str(g["id"])): g for g in generations}
    for first in ("rl", "sl"):
        rows = [
            j for j in judgements if j["set"] == "harmless" and j["first"] == first and j["second"] == "start"
        ]
        if rows:
            rows.sort(key=lambda j: -abs(j["pA"] - 0.5))
            return [
                {
                    "prompt": j["prompt"],
                    "first": first,
                    "pA": j["pA"],
                    "firstResponse": texts[("harmless", str(j["id"]))][first],
                    "startResponse": texts[("harmless", str(j["id"]))]["start"],
                }
                for j in rows[:n]
            ]
    return []


def write_report(
    out: Path,
    *,
    name: str,
    refs: dict[str, str],
    feedback: str,
    reward: str,
    algorithm: str,
    kl_coef: float,
    win_rates: dict[str, dict[str, dict[str, Any]]],
    pm_scores: dict[str, dict[str, float]],
    generations: list[dict[str, Any]],
    judgements: list[dict[str, Any]],
    heldout: list[dict[str, Any]],
    pm_metrics: dict[str, Any],
    rl_log: list[dict[str, Any]],
    rl_metrics: dict[str, Any],
    pm_loss: list[dict[str, Any]] | None = None,
    judge: dict[str, Any] | None = None,
    refusal: dict[str, dict[str, dict[str, Any]]] | None = None,
) -> dict[str, Any]:
    """Write report.html and the plots into `out`; return the summary (also what summary.json holds).

    `judge` names the model that decided the win rates and refusal rates and whether it is independent;
    `refusal` holds the judge's refusal rates per prompt set and model."""
    judge = judge or {
        "model": feedback,
        "independent": False,
        "notIndependentBecause": "the judge is the feedback model that labelled the preference model's "
        "training data",
    }
    refusal = refusal or {}
    examples = differing_examples(judgements, generations)
    plots = _plots(out, win_rates, heldout, pm_loss or [], rl_log)
    held_acc = accuracy(heldout) if heldout else pm_metrics.get("heldOutAccuracy")
    ece = expected_calibration_error(heldout) if heldout else pm_metrics.get("calibrationError")
    rewards = [e["reward"] for e in rl_log if "reward" in e]
    kls = [e["kl"] for e in rl_log if "kl" in e]
    summary: dict[str, Any] = {
        "name": name,
        "createdAt": datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z"),
        "models": {**refs, "feedback": feedback, "judge": judge["model"], "reward": reward},
        "judge": judge,
        "winRates": win_rates,
        "refusal": refusal,
        "sideBySide": examples,
        "preferenceModel": {
            "heldOutAccuracy": held_acc,
            "calibrationError": ece,
            "heldOut": len(heldout),
            "scores": pm_scores,
        },
        "rl": {
            "algorithm": algorithm,
            "klCoef": kl_coef,
            "steps": len(rl_log),
            # First and last quarter means, as train-policy's manifest and status.metrics define them.
            "rewardFirst": rl_metrics.get("rewardFirst", quarter_mean(rewards, head=True)),
            "rewardLast": rewards[-1] if rewards else None,
            "rewardMean": rl_metrics.get("rewardMean", quarter_mean(rewards)),
            "kl": rl_metrics.get("kl", quarter_mean(kls)),
            "klLast": kls[-1] if kls else None,
        },
        "plots": plots,
        "report": "report.html",
    }
    summary["degenerate"] = degenerate_counts(generations)
    summary["verdict"] = verdict(summary)
    parts = [
        *_head(summary),
        *_judge_section(judge),
        *_win_rate_section(win_rates, plots),
        *_refusal_section(refusal),
        *_differing_section(examples),
        *_pm_section(summary["preferenceModel"], plots),
        *_rl_section(summary["rl"], rl_log, plots),
        *_generations_section(generations, judgements),
        (
            "<p class='note'>All responses: greedy decoding. Full data: generations.jsonl, "
            "judgements.jsonl, summary.json.</p></body></html>"
        ),
    ]
    (out / "report.html").write_text("\n".join(parts), encoding="utf-8")
    return summary


def _head(summary: dict[str, Any]) -> list[str]:
    """The page's head: the verdict first, then what produced the report and the models."""
    name, note = summary["name"], degenerate_note(summary)
    return [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>RL-CAI report: {_e(name)}</title>",
        (
            "<style>body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;"
            "color:#222}table{border-collapse:collapse;margin:1em 0}"
            "td,th{border:1px solid #ccc;padding:4px 8px;"
            "vertical-align:top;text-align:left}th{background:#f3f3f3}"
            ".num{text-align:right;font-variant-numeric:tabular-nums}"
            ".resp{white-space:pre-wrap;font-size:0.9em;max-width:340px}img{max-width:100%;margin:0.5em}"
            ".note{color:#666;font-size:0.9em}</style></head><body>"
        ),
        f"<h1>RL-CAI evaluation: {_e(name)}</h1>",
        f"<p class='verdict'><strong>{_e(summary['verdict'])}</strong></p>",
        f"<p class='verdict'>{_e(note)}</p>" if note else "",
        (
            f"<p class='note'>Generated {_e(summary['createdAt'])} by cai-operator stage "
            "<code>evaluate</code>. "
            "Constitutional AI (Bai et al. 2022).</p>"
        ),
        "<h2>Models</h2><table><tr><th>role</th><th>model</th></tr>",
        *(
            f"<tr><td>{_e(role)}</td><td><code>{_e(ref)}</code></td></tr>"
            for role, ref in summary["models"].items()
        ),
        "</table>",
    ]


def _judge_section(judge: dict[str, Any]) -> list[str]:
    return [
        f"<h2>Judge: <code>{_e(judge['model'])}</code></h2>",
        (
            "<p><strong>Not independent</strong>: "
            + _e(judge["notIndependentBecause"])
            + ". These verdicts grade the "
            "method with a model it shares; read them with that in mind.</p>"
            if not judge["independent"]
            else "<p>Independent: neither the feedback model nor of the policy's model family.</p>"
        ),
    ]


def _win_rate_section(win_rates: dict[str, dict[str, dict[str, Any]]], plots: dict[str, str]) -> list[str]:
    parts = [
        "<h2>Pairwise preferences of the judge</h2>",
        (
            "<p class='note'>Win rate of the first model = mean soft label P(first better), both option "
            "orders averaged, with a 95% percentile-bootstrap CI over prompts; hard win rate counts "
            "pA &gt; 0.5 (ties ½), Wilson 95% CI.</p>"
        ),
        (
            "<table><tr><th>prompts</th><th>comparison</th><th>n</th><th>win rate</th><th>95% CI</th>"
            "<th>hard win rate</th><th>95% CI</th></tr>"
        ),
    ]
    for s, pairs in win_rates.items():
        for p, wr in pairs.items():
            parts.append(
                f"<tr><td>{_e(SET_TITLES.get(s, s))}</td><td>{_e(PAIR_TITLES.get(p, p))}</td>"
                f"<td class='num'>{wr['n']}</td><td class='num'>{_fmt(wr['winRate'])}</td>"
                f"<td class='num'>[{_fmt(wr['ciLow'])}, {_fmt(wr['ciHigh'])}]</td>"
                f"<td class='num'>{_fmt(wr['hardWinRate'])}</td>"
                f"<td class='num'>[{_fmt(wr['hardCiLow'])}, {_fmt(wr['hardCiHigh'])}]</td></tr>"
            )
    parts.append("</table>")
    if "winRates" in plots:
        parts.append(f"<img src='{plots['winRates']}' alt='win rates with confidence intervals'>")
    return parts


def _refusal_section(refusal: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    if not refusal:
        return []
    parts = [
        "<h2>Refusals, decided by the judge</h2>",
        (
            "<p class='note'>The judge is asked whether each response declines, refuses or evades the "
            "request (both option orders averaged). On red-team prompts a refusal is wanted; on helpful "
            "prompts it is a needless refusal (evasiveness). Rate = mean P(refuses); share = responses "
            "with P &gt; 0.5, Wilson 95% CI.</p>"
        ),
        ("<table><tr><th>prompts</th><th>model</th><th>n</th><th>rate</th><th>share</th>"
         "<th>95% CI</th></tr>"),
    ]
    for s, roles in refusal.items():
        for role, r in roles.items():
            parts.append(
                f"<tr><td>{_e(SET_TITLES.get(s, s))}</td><td>{_e(role)}</td><td class='num'>{r['n']}</td>"
                f"<td class='num'>{_fmt(r['rate'])}</td><td class='num'>{_fmt(r['hardRate'])}</td>"
                f"<td class='num'>[{_fmt(r['hardCiLow'])}, {_fmt(r['hardCiHigh'])}]</td></tr>"
            )
    parts.append("</table>")
    return parts


def _differing_section(examples: list[dict[str, Any]]) -> list[str]:
    """The prompts where the judge separated the trained model from the start model most."""
    if not examples:
        return []
    who = "RL-CAI" if examples[0]["first"] == "rl" else "SL-CAI"
    parts = [
        f"<h2>Where the judge separated {who} from the start model most</h2>",
        f"<table><tr><th>prompt</th><th>start</th><th>{who}</th><th>P({who} better)</th></tr>",
    ]
    for ex in examples:
        parts.append(
            f"<tr><td class='resp'>{_e(_clip(ex['prompt']))}</td>"
            f"<td class='resp'>{_e(_clip(ex['startResponse']))}</td>"
            f"<td class='resp'>{_e(_clip(ex['firstResponse']))}</td>"
            f"<td class='num'>{_fmt(ex['pA'])}</td></tr>"
        )
    parts.append("</table>")
    return parts


def _pm_section(pm: dict[str, Any], plots: dict[str, str]) -> list[str]:
    parts = [
        "<h2>Preference model</h2><table>",
        f"<tr><th>held-out accuracy</th><td class='num'>{_fmt(pm['heldOutAccuracy'])}</td></tr>",
        (
            "<tr><th>expected calibration error (10 bins)</th>"
            f"<td class='num'>{_fmt(pm['calibrationError'])}</td></tr>"
        ),
        f"<tr><th>held-out comparisons</th><td class='num'>{pm['heldOut']}</td></tr>",
        *(
            f"<tr><th>mean PM score, {_e(role)} ({_e(s)} prompts)</th><td class='num'>{_fmt(v)}</td></tr>"
            for role, sets in pm["scores"].items()
            for s, v in sets.items()
        ),
        "</table>",
        (
            "<p class='note'>The preference model scores each response with a reward r; σ(rA − rB), the "
            "logistic function of the difference of two responses' rewards, is its probability that A is "
            "better than B. Calibrated, comparisons it gives 0.7 are preferred by the labels 70% of the "
            "time (the reliability diagram; the expected calibration error is the mean gap).</p>"
        ),
    ]
    for key, alt in (("reliability", "reliability diagram"), ("pmLoss", "preference model loss curve")):
        if key in plots:
            parts.append(f"<img src='{plots[key]}' alt='{alt}'>")
    return parts


def _rl_section(rl: dict[str, Any], rl_log: list[dict[str, Any]], plots: dict[str, str]) -> list[str]:
    parts = [
        "<h2>RL training</h2><table>",
        f"<tr><th>algorithm</th><td>{_e(rl['algorithm'])}</td></tr>",
        f"<tr><th>KL coefficient</th><td class='num'>{_e(rl['klCoef'])}</td></tr>",
        f"<tr><th>logged steps</th><td class='num'>{rl['steps']}</td></tr>",
        (
            "<tr><th>reward, first quarter → last quarter (means)</th>"
            f"<td class='num'>{_fmt(rl['rewardFirst'])} → "
            f"{_fmt(rl['rewardMean'])}</td></tr>"
        ),
        f"<tr><th>KL, last quarter</th><td class='num'>{_fmt(rl['kl'], 4)}</td></tr>",
        "</table>",
    ]
    for key, alt in (("rlReward", "RL reward curve"), ("rlKl", "RL KL curve")):
        if key in plots:
            parts.append(f"<img src='{plots[key]}' alt='{alt}'>")
    samples = [(e["step"], s) for e in rl_log for s in e.get("samples", [])][-4:]
    if samples:
        parts.append(
            "<h3>Sample completions during RL (last steps)</h3><table><tr><th>step</th><th>prompt</th>"
            "<th>completion</th><th>PM reward</th></tr>"
        )
        for step, s in samples:
            parts.append(
                f"<tr><td class='num'>{step}</td><td class='resp'>{_e(_clip(s.get('prompt', '')))}</td>"
                f"<td class='resp'>{_e(_clip(s.get('completion', '')))}</td>"
                f"<td class='num'>{_fmt(s.get('reward'))}</td></tr>"
            )
        parts.append("</table>")
    return parts


def _generations_section(generations: list[dict[str, Any]], judgements: list[dict[str, Any]]) -> list[str]:
    judged = {(j["set"], j["first"], j["second"], str(j["id"])): j["pA"] for j in judgements}
    parts = ["<h2>Example generations</h2>"]
    for s, title in SET_TITLES.items():
        rows = [g for g in generations if g["set"] == s][:EXAMPLES_PER_SET]
        if not rows:
            continue
        parts.append(
            f"<h3>{_e(title)}</h3><table><tr><th>prompt</th><th>start</th><th>SL-CAI</th>"
            "<th>RL-CAI</th><th>P(RL better) vs SL / vs start</th></tr>"
        )
        for g in rows:
            vs_sl = judged.get((s, "rl", "sl", str(g["id"])))
            vs_start = judged.get((s, "rl", "start", str(g["id"])))
            parts.append(
                f"<tr><td class='resp'>{_e(_clip(g['prompt']))}</td>"
                f"<td class='resp'>{_e(_clip(g['start']))}</td>"
                f"<td class='resp'>{_e(_clip(g['sl']))}</td><td class='resp'>{_e(_clip(g['rl']))}</td>"
                f"<td class='num'>{_fmt(vs_sl)} / {_fmt(vs_start)}</td></tr>"
            )
        parts.append("</table>")
    return parts
