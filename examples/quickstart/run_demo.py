"""`make demo`: run the quickstart pipeline on the embedded model, then show what it produced.

Runs `cai run constitutions/harmless.yaml examples/quickstart/` (resumable: rerunning skips finished
stages), then prints where the dataset and model are, two critique→revision chains, and before/after
answers of the starting model and the SL-CAI model to held-out red-team prompts, and finally the
RL-CAI report's summary table (win rates, PM accuracy/calibration, RL reward/KL) and its path.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from cai.api.manifest import load_manifests
from cai.local.state import stored_resource
from cai.store import local_path
from cai.store.fs import normalize

ROOT = Path(__file__).resolve().parents[2]
console = Console()


def short(text: str, width: int = 300) -> str:
    return textwrap.shorten(" ".join(text.split()), width=width, placeholder=" …")


def show_chains(dataset_uri: str, n: int = 2) -> None:
    path = local_path(dataset_uri)
    if path is None:
        return
    chains = [json.loads(line) for line in (path / "revisions.jsonl").read_text().splitlines()[:n]]
    for chain in chains:
        console.rule(f"[bold]red-team prompt {chain['id']}")
        console.print(f"[bold]prompt:[/bold] {short(chain['prompt'])}")
        console.print(f"[bold]initial answer:[/bold] {short(chain['initialResponse'])}")
        for rnd in chain["rounds"]:
            console.print(f"[cyan]round {rnd['round']} ({rnd['principle']})[/cyan] critique: {short(rnd['critique'], 200)}")
            console.print(f"    revision: {short(rnd['revision'], 240)}")


def before_after(start_model: str, sl_model: str, n: int = 3) -> None:
    from cai.data.prompts import load_prompts
    from cai.models.backends import SamplingParams, load_backend

    prompts = load_prompts("builtin:red-team", split="test", limit=n)
    convs = [[{"role": "user", "content": p["prompt"]}] for p in prompts]
    params = SamplingParams(max_new_tokens=80, temperature=0.0)
    answers = {}
    for label, model in (("before (starting model)", start_model), ("after (SL-CAI)", sl_model)):
        backend = load_backend("transformers", model, batch_size=n)
        answers[label] = [c[0].text for c in backend.chat(convs, params)]
        backend.close()
    table = Table(title="Held-out red-team prompts: before and after SL-CAI", show_lines=True)
    table.add_column("prompt", ratio=1)
    for label in answers:
        table.add_column(label, ratio=2)
    for i, p in enumerate(prompts):
        table.add_row(short(p["prompt"], 160), *(short(a[i], 260) for a in answers.values()))
    console.print(table)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--store", default=f"file://{ROOT}/demo-out")
    args = parser.parse_args()
    store = normalize(args.store)
    started = time.monotonic()
    manifests = [str(ROOT / "constitutions" / "harmless.yaml"), str(ROOT / "examples" / "quickstart")]
    rc = subprocess.call([sys.executable, "-m", "cai", "run", *manifests, "--store", store])
    if rc != 0:
        console.print(f"[red]the pipeline failed (exit {rc}); fix the cause and rerun `make demo` to resume[/red]")
        return rc
    elapsed = time.monotonic() - started
    resources = {r.display: r for r in load_manifests(manifests)}
    crun = stored_resource(store, "CritiqueRun", "default", "quickstart-sl")
    if crun is not None:
        console.rule("[bold]SL-CAI (CritiqueRun/quickstart-sl)")
        console.print(f"dataset: {crun.status.outputs.dataset}")
        console.print(f"model:   {crun.status.outputs.model}")
        show_chains(crun.status.outputs.dataset)
        if crun.status.outputs.model:
            before_after(resources["CritiqueRun/quickstart-sl"].spec.model, crun.status.outputs.model)
    rl = stored_resource(store, "RLAIFRun", "default", "quickstart-rl")
    if rl is not None and rl.status.outputs.report:
        from cai.local.report import print_report

        console.rule("[bold]RL-CAI (PreferenceModel/quickstart-pm → RLAIFRun/quickstart-rl)")
        print_report(store, "quickstart-rl")
    console.print(f"\npipeline wall time: {elapsed / 60:.1f} min; artifacts under {store}; `cai status --store {store}` shows them")
    return 0


if __name__ == "__main__":
    sys.exit(main())
