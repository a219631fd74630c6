"""The `cai` command: CRDs, validation, local runs, stages (the pods' entry point), status, models.

Imports stay light here (no torch): subcommands import what they need when they run.
"""

from __future__ import annotations

import argparse
import re
import sys
import textwrap
from pathlib import Path
from typing import Any

DEFAULT_STORE = "file://./artifacts"


def _store(value: str) -> str:
    """--store: only s3:// and file:// stores (or plain paths); argparse prints the reason and exits 2."""
    from .store.fs import StoreURIError, check_uri

    try:
        return check_uri(value)
    except StoreURIError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


class _HelpFormatter(argparse.HelpFormatter):
    """Fills description and epilog paragraphs to the terminal width, and keeps list items ("  term
    text") one per line with their text wrapped under it, so generated lists (stages, built-in models)
    read at 80 columns."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        out = []
        for paragraph in text.split("\n\n"):
            lines = paragraph.splitlines()
            if not all(line.startswith("  ") for line in lines[1:]):
                out.append(textwrap.fill(" ".join(paragraph.split()), width, initial_indent=indent,
                                         subsequent_indent=indent))
                continue
            # A heading line, then items "  term  text" with the terms padded to one column.
            block = [textwrap.fill(lines[0], width, initial_indent=indent, subsequent_indent=indent)]
            for line in lines[1:]:
                term = re.match(r" +\S+ +", line)
                pad = " " * (term.end() if term else 4)
                block.append(textwrap.fill(line, width, initial_indent=indent,
                                           subsequent_indent=indent + pad, break_on_hyphens=False))
            out.append("\n".join(block))
        return "\n\n".join(out)


def _repo_crds_dir() -> Path:
    return Path("crds")


def cmd_crds(args: argparse.Namespace) -> int:
    from .api import crdgen

    out = Path(args.out)
    if args.check:
        stale = crdgen.stale(out)
        if stale:
            print(f"{out}/ is stale (run `cai crds`): {', '.join(stale)}", file=sys.stderr)
            return 1
        print(f"{out}/ is up to date")
        return 0
    written = crdgen.write(out)
    for p in written:
        print(f"wrote {p}")
    if not written:
        print(f"{out}/ already up to date")
    return 0


def _validated(args: argparse.Namespace, check_references: bool) -> tuple[list[Any], int]:
    """The resources of `args.paths` and 0, or 1 after printing every problem (`cai validate`)."""
    from .validation import validate_paths

    resources, problems = validate_paths(args.paths, local=args.local, check_references=check_references)
    for p in problems:
        print(p)
    if problems:
        objects = {(p.file, p.obj) for p in problems}
        print(f"{len(problems)} problem(s) in {len(objects)} object(s)", file=sys.stderr)
        return resources, 1
    if not resources:  # a wrong path or a file of other objects: validating nothing is no success
        print(f"error: no cai.dev objects in {', '.join(args.paths)}", file=sys.stderr)
        return resources, 1
    return resources, 0


def cmd_validate(args: argparse.Namespace) -> int:
    resources, status = _validated(args, check_references=not args.allow_external_refs)
    if not status:
        print(f"{len(resources)} object(s) valid", file=sys.stderr)
    return status


def cmd_plan(args: argparse.Namespace) -> int:
    import json

    from rich.console import Console

    from .data.prompts import PromptSourceError
    from .preview.estimate import plan_resources, to_json
    from .preview.render import print_plan

    # Objects referenced but not given are taken to exist in the cluster (the plan lists them).
    args.local = False
    resources, status = _validated(args, check_references=False)
    if status:
        return status
    try:
        plans = plan_resources(resources)
    except PromptSourceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.output == "json":
        print(json.dumps(to_json(plans), indent=2, ensure_ascii=False))
    else:
        print_plan(Console(), plans)
    return 0


def _engines_arg(value: str) -> str:
    if value != "auto" and not value.isdigit():
        raise argparse.ArgumentTypeError(f"expected auto or a number of engines, not {value!r}")
    return value


def cmd_stage(args: argparse.Namespace) -> int:
    from .stages.runtime import run_stage

    return run_stage(args.name, args.spec, force=args.force, workers=args.workers, worker=args.worker,
                     engines=None if args.engines == "auto" else int(args.engines))


def cmd_run(args: argparse.Namespace) -> int:
    from .local.runner import run_local

    return run_local(args.paths, store=args.store, only=args.only, force=args.force, quiet=args.quiet)


def cmd_status(args: argparse.Namespace) -> int:
    from .local.status import print_status

    return print_status(args.store, as_json=args.json)


def cmd_models(args: argparse.Namespace) -> int:
    """`cai models prepare REF...`: resolve each reference and print where it is."""
    from .models.builtin import builtin_dir, is_prepared
    from .models.refs import parse_model_ref
    from .models.resolve import ModelResolveError, resolve_model

    status = 0
    for ref in args.refs:
        try:
            parsed = parse_model_ref(ref)
            if parsed.scheme == "builtin" and not is_prepared(parsed.target):
                print(
                    f"preparing {ref} into {builtin_dir(parsed.target)} (once)", file=sys.stderr, flush=True
                )
            elif parsed.is_remote:
                print(f"fetching {ref} ...", file=sys.stderr, flush=True)
            path = resolve_model(parsed)
        except (ValueError, ModelResolveError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            status = 1
            continue
        size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        print(f"{ref}\t{path}\t{size / 1e6:.0f} MB")
    return status


def cmd_models_clean(args: argparse.Namespace) -> int:
    """`cai models clean [REF...]`: remove cached models, printing each with its size."""
    from .models.clean import clean

    result = clean(args.refs)
    for path, size in result.removed:
        print(f"removed {path}\t{size / 1e6:.1f} MB")
    for note in result.notes:
        print(note, file=sys.stderr)
    if result.removed:
        total = sum(size for _, size in result.removed)
        print(f"freed {total / 1e6:.1f} MB in {len(result.removed)} item(s)")
    return 1 if result.failed else 0


def cmd_report(args: argparse.Namespace) -> int:
    from .local.report import print_report

    return print_report(args.store, args.name, namespace=args.namespace)


def cmd_operator(args: argparse.Namespace) -> int:
    from .controller.main import run_operator

    return run_operator(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cai", description="Constitutional AI training: Kubernetes operator and local runner."
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__import__('cai').__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser(
        "crds",
        formatter_class=_HelpFormatter,
        help="write crds/*.yaml from the API types (or --check they are current)",
        description="Generate the CustomResourceDefinitions from the API types into crds/ and the chart's "
        "copy, or check that the files are current.",
    )
    s.add_argument("--out", default=str(_repo_crds_dir()), help="output directory (default: %(default)s)")
    s.add_argument("--check", action="store_true", help="exit 1 when the files differ from the API types")
    s.set_defaults(func=cmd_crds)

    s = sub.add_parser(
        "validate",
        formatter_class=_HelpFormatter,
        help="validate manifests offline with the same rules as the CRDs",
        description="Check manifests offline with the rules the CRDs enforce in the cluster, plus the "
        "references between objects; prints every problem with its file and field.",
    )
    s.add_argument("paths", nargs="+", help="manifest files or directories")
    s.add_argument(
        "--local", action="store_true", help="also require local files (models, prompt files) to exist"
    )
    s.add_argument("--allow-external-refs", action="store_true",
                   help="do not report references to objects outside the given manifests")
    s.set_defaults(func=cmd_validate)

    s = sub.add_parser(
        "plan",
        formatter_class=_HelpFormatter,
        help="show what manifests will create: stages, Jobs, pods, GPUs, prompts, tokens",
        description="Validate the manifests as `cai validate` does, then show per run, in dependency order, "
        "each stage with its Job (an Indexed Job over resources.nodes pods for training stages), GPUs per "
        "pod, the prompts it reads and an estimate of its generated tokens or optimizer steps, with the "
        "formula. Nothing runs; objects referenced but not given are assumed to exist in the cluster.",
    )
    s.add_argument("paths", nargs="+", help="manifest files or directories")
    s.add_argument("-o", "--output", choices=("table", "json"), default="table",
                   help="table (default) or json (keys: README, \"Planning a run\")")
    s.set_defaults(func=cmd_plan)

    store_help = "artifact store URI or path; file://./dir is under this directory (default: %(default)s)"
    s = sub.add_parser(
        "run",
        formatter_class=_HelpFormatter,
        help="run resources locally: validate, order, run every stage, resume on rerun",
        description="Run Constitutions, CritiqueRuns, PreferenceModels and RLAIFRuns on this machine, in "
        "dependency order, as the operator would; finished stages are kept and a rerun resumes.",
    )
    s.add_argument("paths", nargs="+", help="manifest files or directories")
    s.add_argument("--store", default=DEFAULT_STORE, type=_store, help=store_help)
    s.add_argument(
        "--only", action="append", default=None, metavar="KIND/NAME", help="run only these resources"
    )
    s.add_argument("--force", action="store_true", help="rerun stages even when their outputs are up to date")
    s.add_argument("--quiet", action="store_true", help="no progress bars (plain log lines)")
    s.set_defaults(func=cmd_run)

    from .api.kinds import STAGES  # the stage registry (pydantic types only, no torch)
    from .controller.builders import SPEC_FILE

    stages = "\n".join(f"  {name:<22} {kind.kind}" for name, (kind, _) in STAGES.items())
    s = sub.add_parser(
        "stage",
        formatter_class=_HelpFormatter,
        help="run one stage (the entry point of the operator's pods)",
        description="Run one stage of a resource and publish its artifact; an up-to-date artifact is kept.",
        epilog=f"stages (and the kind each belongs to):\n{stages}\n\n"
        "The spec is written for you: the operator mounts it into each stage pod from "
        f"the run's ConfigMap (as {SPEC_FILE}); `cai run` writes it to a temporary file.",
    )
    s.add_argument("name", metavar="STAGE", help="stage name (listed below)")
    s.add_argument("--spec", required=True, metavar="FILE",
                   help="stage spec JSON (a StageSpec: resource spec, models, input and output URIs)")
    s.add_argument("--force", action="store_true", help="run even when the output is up to date")
    s.add_argument("--workers", type=int, default=1, metavar="N",
                   help="run as one of N data-parallel workers (generation stages); the last to finish "
                   "merges and publishes")
    s.add_argument("--worker", type=int, metavar="K",
                   help="this worker's index, 0..N-1 (default: $JOB_COMPLETION_INDEX of an Indexed Job)")
    s.add_argument("--engines", default="auto", type=_engines_arg, metavar="auto|G",
                   help="engine processes this worker runs, one per GPU (data-parallel stages): auto runs "
                   "one per GPU of the pod when the model fits one GPU, else one engine over all of them")
    s.set_defaults(func=cmd_stage)

    s = sub.add_parser(
        "status",
        formatter_class=_HelpFormatter,
        help="show the status of locally run resources",
        description="Show each resource run into the store by `cai run`: its condition, stages, outputs "
        "and metrics. Exits 1 when the store is missing or holds no resources.",
    )
    s.add_argument("--store", default=DEFAULT_STORE, type=_store, help=store_help)
    s.add_argument("--json", action="store_true", help="print JSON instead of a table")
    s.set_defaults(func=cmd_status)

    from .models.refs import ACCEPTED_FORMS, BUILTIN_MODELS

    builtins = "\n".join(f"  builtin:{name:<28} {about}" for name, about in BUILTIN_MODELS.items())
    other_forms = [f for f in ACCEPTED_FORMS if not f.startswith("builtin:")]
    s = sub.add_parser(
        "models",
        formatter_class=_HelpFormatter,
        help="prepare or clean models in the model cache",
        description="Prepare models into the model cache ($CAI_CACHE_DIR, default ~/.cache/cai) or remove "
        "them from it.",
    )
    msub = s.add_subparsers(dest="models_command", required=True, metavar="SUBCOMMAND")
    m = msub.add_parser(
        "prepare",
        formatter_class=_HelpFormatter,
        help="prepare models into the cache (e.g. builtin:smollm2-135m-instruct)",
        description="Resolve each model reference (prepare a built-in model, download a hub or object-store "
        "model) and print its local directory and size.",
        epilog=f"built-in models:\n{builtins}\n\nother references: {', '.join(other_forms)}",
    )
    m.add_argument("refs", nargs="+", metavar="REF", help="model references (built-in models listed below)")
    m.set_defaults(func=cmd_models)
    m = msub.add_parser(
        "clean",
        formatter_class=_HelpFormatter,
        help="remove models from the cache (all, or the named ones)",
        description="Remove cached models and print each removed directory with its size. Without REF, "
        "every model in the cache ($CAI_CACHE_DIR, default ~/.cache/cai) goes; stage checkpoints in its "
        "work/ are kept. With REFs, only theirs; a REF with no cache entry is reported.",
    )
    m.add_argument("refs", nargs="*", metavar="REF", help="model references, e.g. builtin:tiny-random")
    m.set_defaults(func=cmd_models_clean)

    s = sub.add_parser(
        "report",
        formatter_class=_HelpFormatter,
        help="print the evaluation summary of an RLAIFRun run locally",
        description="Print the evaluation of an RLAIFRun that `cai run` finished: how the trained policy "
        "compares with its starting point, and where report.html is.",
    )
    s.add_argument("name", help="RLAIFRun name")
    s.add_argument("--store", default=DEFAULT_STORE, type=_store, help=store_help)
    s.add_argument("--namespace", default="default", help="namespace of the RLAIFRun (default: %(default)s)")
    s.set_defaults(func=cmd_report)

    s = sub.add_parser(
        "operator",
        formatter_class=_HelpFormatter,
        help="run the Kubernetes operator (kopf)",
        description="Run the controller that turns the cai.dev resources of a cluster into stage Jobs. "
        "Replicas elect a leader through a Lease; settings come from CAI_* environment variables "
        "(docs/operator.md).",
    )
    s.add_argument(
        "--kubeconfig",
        help="kubeconfig file (default: in a pod its service account, else $KUBECONFIG, else ~/.kube/config)",
    )
    s.add_argument(
        "--namespace", action="append", default=None,
        help="watch this namespace; repeat for several (default: all namespaces)",
    )
    s.add_argument("--metrics-port", type=int, default=8080,
                   help="Prometheus /metrics port (default: %(default)s)")
    s.add_argument("--health-port", type=int, default=8081,
                   help="liveness/readiness port (default: %(default)s)")
    s.add_argument("--standalone", action="store_true",
                   help="no leader election: this replica acts alone (one replica, tests)")
    s.set_defaults(func=cmd_operator)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
