"""`cai operator`: run the controller with kopf against the cluster of a kubeconfig or in-cluster.

Where it sits: `cli.py` parses the flags and calls `run_operator(args)`; this module reads the operator
config from the environment, points kopf at the namespaces to watch and runs it until SIGTERM/SIGINT,
after which kopf runs the cleanup handler (stop workers, release the leader Lease).

kopf's own peering is off (standalone): two replicas coordinate through a Lease (`leader.py`) instead,
which needs no extra CRDs. `--standalone` also switches the Lease off (one replica, tests).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from typing import Any

import kopf

from .config import ConfigError, OperatorConfig


class RetriesAreWarnings(logging.Filter):
    """kopf logs every retried API request at ERROR ("Request attempt #1/9 failed; will retry: ..."),
    the routine ones of start-up included (an apiserver still starting, a watch cut by a restart). A
    retry is a warning; the final failure ("...; escalating") stays an error."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.ERROR and record.name.startswith("kopf.") \
                and "failed; will retry" in record.getMessage():
            record.levelno, record.levelname = logging.WARNING, logging.getLevelName(logging.WARNING)
        return True


def configure_logging(level: str) -> None:
    kopf.configure(verbose=level == "DEBUG", log_format=kopf.LogFormat.FULL)
    logging.getLogger().setLevel(level)
    for handler in logging.getLogger().handlers:  # handler filters see records of every logger
        handler.addFilter(RetriesAreWarnings())


def run_operator(args: argparse.Namespace) -> int:
    level = os.environ.get("CAI_LOG_LEVEL", "INFO").upper()
    configure_logging(level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    if level != "DEBUG":
        # kopf logs "Handler ... succeeded" for every watch event; our own log lines say what happened.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    if args.kubeconfig:
        if not os.path.exists(args.kubeconfig):
            print(f"error: --kubeconfig {args.kubeconfig}: file not found", file=sys.stderr)
            return 2
        os.environ["KUBECONFIG"] = os.path.abspath(args.kubeconfig)
    try:
        overrides: dict[str, Any] = {"metrics_port": args.metrics_port, "health_port": args.health_port}
        if args.standalone:
            overrides["leader_election"] = False
        config = OperatorConfig.from_env(None, **overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    namespaces = tuple(args.namespace or ()) or config.watch_namespaces

    from .kube import _kubeconfig_needs_plugin

    if os.environ.get("KUBERNETES_SERVICE_HOST") or not _kubeconfig_needs_plugin():
        # kopf imports the kubernetes client when it is installed, only to recognise its models; the
        # operator never uses them. Keeping it out saves a second of start-up and ~10 MB (the slim image
        # may not have it at all). Kubeconfigs with exec/auth-provider plugins still get it (kube.login_sync).
        for name in ("kubernetes", "kubernetes_asyncio", "pykube"):
            sys.modules.setdefault(name, None)  # type: ignore[arg-type]

    from . import handlers  # noqa: F401  (registers the handlers with kopf's default registry)

    memo = kopf.Memo(config=config, standalone=args.standalone)
    try:
        asyncio.run(kopf.operator(
            standalone=True,  # no kopf peering: the Lease decides who acts (see leader.py)
            # Our own identity (the pod name): kopf's default asks getpass for a user name, which fails
            # for a UID without a passwd entry, as the operator image's 65532.
            identity=config.identity,  # type: ignore[arg-type]  # kopf.Identity: a NewType of str
            clusterwide=not namespaces,
            namespaces=list(namespaces),
            memo=memo,
        ))
    except kopf.LoginError as e:
        print(f"error: cannot log in to the cluster: {e}", file=sys.stderr)
        return 1
    return 0
