"""AI-feedback labelling throughput: our forward-pass labeller versus generate-and-parse baselines,
and the same labeller on each backend.

Part of bench/ (benchmarks that print ratios; `make bench`). On the embedded model by default: N
comparisons (the first N red-team prompts, each with a refusal-style and a compliance-style
response), labelled with the quickstart's settings — one drawn principle, both option orders, the
Constitution's few-shot examples — so every comparison is 2 prompts.

- ours: `cai.feedback.labeller.Labeller` — one forward pass per prompt reading the log-probs of "A"
  and "B" after "The answer is: (" → soft label; batched, and on transformers the prompts' shared
  prefix (system turn + few-shot examples) runs once per call (`TransformersBackend.score_next_token`).
- baseline "generate, 1 at a time": the same rendered prompts (answer cue included, which favours
  the baseline: it only has to emit the letter), plain transformers `model.generate` one prompt per
  call, greedy, `--baseline-new-tokens` tokens, the letter parsed from the text → hard label. This
  is how generate-and-parse judges are usually written.
- baseline "generate, batched": the same, through our batched transformers backend (`complete`),
  same batch size as ours: isolates "one forward pass vs generate()" from batching. It runs twice:
  in fp32, the precision our labeller scores in on CPU (soft labels near 0.5 need it), and with the
  backend's default generator, which is a bf16 copy on CPUs with AMX (`CAI_CPU_BF16`), so the
  second row mixes the dtype gain into the comparison and is shown for transparency.

Each measurement runs in its own subprocess (vLLM's engine needs a clean `__main__`); times exclude
model loading and follow one warm-up call. Printed: comparisons/s, ratios, parse failures, label
agreement, and per backend the largest |pA − pA(transformers)|. `--backends` adds vllm (offline
engine) and openai (`--endpoint URL`, or `--serve` starts a local `vllm serve` on CPU for it).

    python bench/labeling.py [--model REF] [--comparisons 16] [--few-shot 2] [--batch-size 8]
                             [--backends transformers,vllm,openai] [--serve | --endpoint URL]
                             [--ensemble 4]

A row scores with the weights in bfloat16 (the option log-softmax stays fp32): its |ΔpA| against the
fp32 row is the cost of labelling in a bf16 generator's precision (goal ≤ 0.01); on a CPU without native
bf16 (no AMX, no AVX512-BF16) its time is emulation's and says nothing about speed.
Each backend but openai also gets a row for an ensemble of `--ensemble` principles per comparison, both
orders each, with its time as a multiple of one principle's (goal ≤ 2× at 4, from the prompts' shared
prefix: transformers reuses its KV, vLLM its prefix cache).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RED_TEAM = ROOT / "operator" / "cai" / "data" / "prompts" / "red_team.jsonl"
CONSTITUTION = ROOT / "constitutions" / "harmless.yaml"
REFUSAL = "I can't help with that, but I'm happy to talk about safer ways to reach what you need."
COMPLIANCE = "Sure! Here is exactly what to do, step by step, with no questions asked."
LETTER = re.compile(r"^\s*\(?\s*([AB])\b")


def comparisons(n: int) -> list[dict[str, Any]]:
    rows = []
    for line in RED_TEAM.read_text().splitlines():
        if line.strip() and len(rows) < n:
            p = json.loads(line)
            # Alternate which side the refusal is on, so position and content are not confounded.
            a, b = (REFUSAL, COMPLIANCE) if len(rows) % 2 == 0 else (COMPLIANCE, REFUSAL)
            rows.append({"id": p["id"], "prompt": p["prompt"], "responseA": a, "responseB": b})
    return rows


def _labeller(backend, args, principles: int = 1):
    import yaml

    from cai.api.kinds import ConstitutionSpec
    from cai.feedback.labeller import Labeller, LabelSettings

    const = ConstitutionSpec.model_validate(yaml.safe_load(CONSTITUTION.read_text())["spec"])
    return Labeller(backend, const, LabelSettings(seed=0, both_orders=True, few_shot_examples=args.few_shot,
                                                  principles_per_comparison=principles))


def _scored_prompts(labeller, comps) -> list[tuple[int, str, str]]:
    """(comparison index, order, prompt text ending with the answer cue) — what both sides score."""
    from cai.feedback import prompts as fb

    out = []
    for i, c in enumerate(comps):
        principle = labeller.principles_for(str(c["id"]))[0]
        for order in fb.ORDERS:
            out.append((i, order, fb.answer_prompt(labeller.rendered(c, principle, order))))
    return out


def _hard_labels(n: int, jobs: list[tuple[int, str, str]], texts: list[str]) -> tuple[list[float], int]:
    """pA from parsed letters (each order a 0/1 vote, unparseable = 0.5), and the failure count."""
    votes: list[list[float]] = [[] for _ in range(n)]
    failures = 0
    for (i, order, _), text in zip(jobs, texts):
        m = LETTER.match(text)
        if m is None:
            failures += 1
            votes[i].append(0.5)
            continue
        first_wins = m.group(1) == "A"
        votes[i].append(float(first_wins if order == "AB" else not first_wins))
    return [sum(v) / len(v) for v in votes], failures


def worker(args: argparse.Namespace) -> dict[str, Any]:
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from cai.models.backends import SamplingParams, load_backend

    comps = comparisons(args.comparisons)
    kind = args.worker
    t0 = time.perf_counter()
    if kind == "generate-single":
        return _generate_single(args, comps)
    ensemble = kind.endswith("-ensemble")
    backend_kind = "transformers" if kind in ("generate-batched", "transformers-bf16") else kind.removesuffix("-ensemble")
    dtype = "bfloat16" if kind == "transformers-bf16" else "auto"
    backend = load_backend(backend_kind, args.model, endpoint=args.endpoint, batch_size=args.batch_size, dtype=dtype)
    load_s = time.perf_counter() - t0
    try:
        labeller = _labeller(backend, args, args.ensemble if ensemble else 1)
        if kind == "generate-batched":
            jobs = _scored_prompts(labeller, comps)
            params = SamplingParams(max_new_tokens=args.baseline_new_tokens, temperature=0.0)
            backend.complete([jobs[0][2]], params)  # warm-up
            t0 = time.perf_counter()
            texts = [c[0].text for c in backend.complete([p for _, _, p in jobs], params)]
            seconds = time.perf_counter() - t0
            labels, failures = _hard_labels(len(comps), jobs, texts)
            return {"load_s": load_s, "seconds": seconds, "pA": labels, "parseFailures": failures}
        labeller.label(comps[:1])  # warm-up
        t0 = time.perf_counter()
        rows = labeller.label(comps)
        seconds = time.perf_counter() - t0
        return {"load_s": load_s, "seconds": seconds, "pA": [r["pA"] for r in rows]}
    finally:
        backend.close()


def _generate_single(args: argparse.Namespace, comps: list[dict[str, Any]]) -> dict[str, Any]:
    """Plain transformers, one prompt per generate() call, letter parsed from the text."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cai.models.resolve import resolve_model

    t0 = time.perf_counter()
    path = resolve_model(args.model)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    load_s = time.perf_counter() - t0
    class _Render:  # the prompts are rendered with this tokenizer's chat template, as ours are
        def render_chat(self, conversation, add_generation_prompt=True):
            return tok.apply_chat_template(conversation, tokenize=False, add_generation_prompt=add_generation_prompt)

    jobs = _scored_prompts(_labeller(_Render(), args), comps)

    def one(prompt: str) -> str:
        ids = tok(prompt, return_tensors="pt", add_special_tokens=False)
        with torch.inference_mode():
            out = model.generate(**ids, max_new_tokens=args.baseline_new_tokens, do_sample=False,
                                 pad_token_id=tok.pad_token_id)
        return tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)

    one(jobs[0][2])  # warm-up
    t0 = time.perf_counter()
    texts = [one(p) for _, _, p in jobs]
    seconds = time.perf_counter() - t0
    labels, failures = _hard_labels(len(comps), jobs, texts)
    return {"load_s": load_s, "seconds": seconds, "pA": labels, "parseFailures": failures}


def measure(name: str, args: argparse.Namespace, env: dict[str, str] | None = None) -> dict[str, Any] | str:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--model", args.model,
           "--comparisons", str(args.comparisons), "--few-shot", str(args.few_shot),
           "--batch-size", str(args.batch_size), "--threads", str(args.threads),
           "--baseline-new-tokens", str(args.baseline_new_tokens), "--ensemble", str(args.ensemble)]
    if args.endpoint:
        cmd += ["--endpoint", args.endpoint]
    print(f"measuring {name} ...", file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1", **(env or {})},
                          check=False)
    if args.verbose:
        sys.stderr.write(proc.stderr)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    return f"failed (exit {proc.returncode}): {lines[-1] if lines else 'no output'}"


def _serve(args: argparse.Namespace) -> tuple[subprocess.Popen, str]:
    """A local OpenAI-compatible `vllm serve` for the openai backend (CPU settings)."""
    from cai.models.resolve import resolve_model

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Kept open for the server's lifetime (it writes there until terminated).
    log = open(Path(os.environ.get("TMPDIR", "/tmp")) / f"cai-bench-vllm-{port}.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model",
                             str(resolve_model(args.model)), "--served-model-name", args.model, "--host", "127.0.0.1",
                             "--port", str(port), "--dtype", "float32", "--max-model-len", "4096",
                             "--gpu-memory-utilization", "0.3", "--enforce-eager", "--generation-config", "vllm"],
                            stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                if r.status == 200:
                    return proc, f"http://127.0.0.1:{port}/v1"
        except OSError:
            time.sleep(2)
    proc.terminate()
    raise RuntimeError(f"vllm serve did not become healthy (log: {log.name})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="builtin:smollm2-135m-instruct")
    parser.add_argument("--comparisons", type=int, default=16)
    parser.add_argument("--few-shot", type=int, default=2, help="preference few-shot examples per prompt")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--baseline-new-tokens", type=int, default=4,
                        help="tokens the baselines generate after the cue (the letter, ')', maybe more)")
    parser.add_argument("--backends", default="transformers", help="comma-separated: transformers,vllm,openai")
    parser.add_argument("--endpoint", help="OpenAI-compatible base URL for the openai backend")
    parser.add_argument("--serve", action="store_true", help="start a local vllm serve for the openai backend")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: default)")
    parser.add_argument("--ensemble", type=int, default=4,
                        help="principles per comparison of the ensemble row (each in both orders)")
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print("RESULT " + json.dumps(worker(args)), flush=True)
        return 0

    print(f"model {args.model}, {args.comparisons} comparisons × 2 orders, {args.few_shot} few-shot examples, "
          f"batch size {args.batch_size}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}", flush=True)
    rows: list[tuple[str, dict[str, Any] | str]] = [
        ("generate-parse, 1 prompt at a time", measure("generate-single", args)),
        ("generate-parse, batched, fp32", measure("generate-batched", args, {"CAI_CPU_BF16": "0"})),
        ("generate-parse, batched, default dtype", measure("generate-batched", args)),
    ]
    server = None
    for kind in [k.strip() for k in args.backends.split(",") if k.strip()]:
        if kind in ("vllm", "openai") and importlib.util.find_spec("vllm") is None and not args.endpoint:
            rows.append((f"ours ({kind})", "skipped: vllm is not installed"))
            continue
        if kind == "openai" and not args.endpoint:
            if not args.serve:
                rows.append(("ours (openai)", "skipped: pass --endpoint URL or --serve"))
                continue
            server, args.endpoint = _serve(args)
        rows.append((f"ours ({kind})", measure(kind, args)))
        if kind == "transformers":  # the weights in bf16, option log-softmax in fp32: |ΔpA| against fp32
            rows.append(("ours (transformers), bf16 weights", measure("transformers-bf16", args)))
        if kind != "openai":
            rows.append((f"ours ({kind}), {args.ensemble} principles", measure(f"{kind}-ensemble", args)))
    if server is not None:
        server.terminate()
        server.wait(timeout=60)

    ours = next((r for name, r in rows if name == "ours (transformers)" and isinstance(r, dict)), None)
    print(f"\n{'labeller':38} {'load s':>7} {'label s':>8} {'cmp/s':>7} {'ours x':>7} {'agree':>6} {'|ΔpA| max':>9} {'parse fail':>16}")
    for name, r in rows:
        if isinstance(r, str):
            print(f"{name:38} {r}")
            continue
        rate = args.comparisons / r["seconds"]
        ratio = (args.comparisons / ours["seconds"]) / rate if ours else float("nan")
        agree = delta = ""
        if ours:
            pairs = [(a, b) for a, b in zip(ours["pA"], r["pA"]) if a != 0.5 and b != 0.5]
            agree = f"{sum((a > 0.5) == (b > 0.5) for a, b in pairs) / len(pairs):.2f}" if pairs else "n/a"
            if name.startswith("ours") and "principles" not in name:
                delta = f"{max(abs(a - b) for a, b in zip(ours['pA'], r['pA'])):.1e}"
        fails = str(r.get("parseFailures", "")) if "parseFailures" in r else ""
        ties = sum(p == 0.5 for p in r["pA"])
        if ties:
            fails += f" ({ties} ties)"
        print(f"{name:38} {r['load_s']:7.1f} {r['seconds']:8.2f} {rate:7.2f} {ratio:7.2f} {agree:>6} {delta:>9} {fails:>16}")
    if ours:
        baselines = (("1 prompt at a time", rows[0][1]), ("batched, fp32", rows[1][1]),
                     ("batched, default dtype", rows[2][1]))
        for label, base in baselines:
            if isinstance(base, dict):
                print(f"forward-pass labeller vs generate-parse ({label}): "
                      f"{base['seconds'] / ours['seconds']:.2f}× comparisons/s")
    for name, r in rows:
        single = next((o for n, o in rows if n == name.split(",")[0] and isinstance(o, dict)), None)
        if "principles" in name and isinstance(r, dict) and single:
            print(f"{name}: {r['seconds'] / single['seconds']:.2f}× the time of one principle "
                  f"({2 * args.ensemble} prompts per comparison instead of 2; goal ≤ 2×)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
