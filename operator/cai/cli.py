"""The `cai` command: CRDs, validation, local runs, stages (the pods' entry point), status, models.

Imports stay light here (no torch): subcommands import what they need when they run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFAULT_STORE = "file://./artifacts"


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


def cmd_validate(args: argparse.Namespace) -> int:
    from .validation import validate_paths

    resources, problems = validate_paths(
        args.paths, local=args.local, check_references=not args.allow_external_refs
    )
    for p in problems:
        print(p)
    if problems:
        objects = {(p.file, p.obj) for p in problems}
        print(f"{len(problems)} problem(s) in {len(objects)} object(s)", file=sys.stderr)
        return 1
    print(f"{len(resources)} object(s) valid", file=sys.stderr)
    return 0


def cmd_stage(args: argparse.Namespace) -> int:
    from .stages.runtime import run_stage

    return run_stage(args.name, args.spec, force=args.force)


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

    s = sub.add_parser("crds", help="write crds/*.yaml from the API types (or --check they are current)")
    s.add_argument("--out", default=str(_repo_crds_dir()), help="output directory (default: crds)")
    s.add_argument("--check", action="store_true", help="exit 1 when the files differ from the API types")
    s.set_defaults(func=cmd_crds)

    s = sub.add_parser("validate", help="validate manifests offline with the same rules as the CRDs")
    s.add_argument("paths", nargs="+", help="manifest files or directories")
    s.add_argument(
        "--local", action="store_true", help="also require local files (models, prompt files) to exist"
    )
    s.add_argument("--allow-external-refs", action="store_true",
                   help="do not report references to objects outside the given manifests")
    s.set_defaults(func=cmd_validate)

    s = sub.add_parser("run", help="run resources locally: validate, order, run every stage, resume on rerun")
    s.add_argument("paths", nargs="+", help="manifest files or directories")
    s.add_argument("--store", default=DEFAULT_STORE, help=f"artifact store URI (default {DEFAULT_STORE})")
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
        help="run one stage (the entry point of the operator's pods)",
        description="Run one stage of a resource and publish its artifact; an up-to-date artifact is kept.",
        epilog=f"stages (and the kind each belongs to):\n{stages}\n\n"
        "The spec is written for you: the operator mounts it into each stage pod from\n"
        f"the run's ConfigMap (as {SPEC_FILE}); `cai run` writes it to a temporary file.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s.add_argument("name", metavar="STAGE", help="stage name (listed below)")
    s.add_argument("--spec", required=True, metavar="FILE",
                   help="stage spec JSON (a StageSpec: resource spec, models, input and output URIs)")
    s.add_argument("--force", action="store_true", help="run even when the output is up to date")
    s.set_defaults(func=cmd_stage)

    s = sub.add_parser("status", help="show the status of locally run resources")
    s.add_argument("--store", default=DEFAULT_STORE, help=f"artifact store URI (default {DEFAULT_STORE})")
    s.add_argument("--json", action="store_true", help="print JSON instead of a table")
    s.set_defaults(func=cmd_status)

    s = sub.add_parser("models", help="model utilities")
    msub = s.add_subparsers(dest="models_command", required=True, metavar="SUBCOMMAND")
    m = msub.add_parser("prepare", help="prepare models into the cache (e.g. builtin:smollm2-135m-instruct)")
    m.add_argument("refs", nargs="+", help="model references")
    m.set_defaults(func=cmd_models)

    s = sub.add_parser("report", help="print the evaluation summary of an RLAIFRun run locally")
    s.add_argument("name", help="RLAIFRun name")
    s.add_argument("--store", default=DEFAULT_STORE, help=f"artifact store URI (default {DEFAULT_STORE})")
    s.add_argument("--namespace", default="default")
    s.set_defaults(func=cmd_report)

    s = sub.add_parser("operator", help="run the Kubernetes operator (kopf)")
    s.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, then ~/.kube/config)")
    s.add_argument(
        "--namespace", action="append", default=None, help="watch only these namespaces (default: all)"
    )
    s.add_argument("--metrics-port", type=int, default=8080, help="Prometheus /metrics port")
    s.add_argument("--health-port", type=int, default=8081, help="liveness/readiness port")
    s.add_argument("--standalone", action="store_true", help="no peering (single replica, tests)")
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
