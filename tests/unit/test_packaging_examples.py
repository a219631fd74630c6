"""The packaging examples (examples/gpu, multi-node, kueue, gitops, storage) say what the operator and the
chart actually read: storage ConfigMaps resolve through the operator's own resolve_storage, credentials are
placeholders, the Kueue run names the example LocalQueue, the multi-node run really is multi-node and its
pod template patches the container the operator builds, and the Argo CD Application points at this chart.
(`cai validate` on examples/ and test_cluster_crds check the cai.dev objects themselves; test_chart.py
renders the Argo CD values with helm.)"""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cai.api.manifest import parse_resource
from cai.controller.builders import CONTAINER, build_job
from cai.controller.config import OperatorConfig
from cai.controller.reconcile import resolve_storage

REPO = Path(__file__).resolve().parents[2]
EX = REPO / "examples"


def docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def run(path: Path, kind: str = "CritiqueRun"):
    (doc,) = [d for d in docs(path) if d["kind"] == kind]
    res, problems = parse_resource(doc, str(path))
    assert res is not None and not problems, problems
    return res


@pytest.mark.parametrize("name,uri,endpoint", [
    ("minio.yaml", "s3://cai-artifacts/runs", "http://minio.minio.svc.cluster.local:9000"),
    ("aws-s3.yaml", "s3://my-company-cai-artifacts/ml-team", "https://s3.eu-west-1.amazonaws.com"),
])
def test_storage_examples_resolve_as_intended(name, uri, endpoint):
    objs = {d["kind"]: d for d in docs(EX / "storage" / name)}
    assert set(objs) == {"ConfigMap", "Secret"}
    cm, secret = objs["ConfigMap"], objs["Secret"]
    assert cm["metadata"]["name"] == "cai-storage", "the operator reads the ConfigMap named cai-storage"
    # even with a MinIO default in the operator, the example's own endpoint wins
    config = OperatorConfig(storage_uri="s3://default/x", s3_endpoint="http://other:9000", storage_secret="other")
    storage = resolve_storage(run(EX / "gpu" / "critique-run.yaml"), cm["data"], config)
    assert storage.uri == uri and storage.endpoint == endpoint and storage.secret_name == secret["metadata"]["name"]
    assert storage.source == "configmap"
    assert set(secret["stringData"]) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    for value in secret["stringData"].values():
        assert value.startswith("REPLACE_WITH_"), "example Secrets hold placeholders, never credentials"


def test_kueue_run_uses_the_example_queue():
    queue = {d["kind"]: d for d in docs(EX / "kueue" / "queue.yaml")}
    assert set(queue) == {"ResourceFlavor", "ClusterQueue", "LocalQueue"}
    assert queue["LocalQueue"]["spec"]["clusterQueue"] == queue["ClusterQueue"]["metadata"]["name"]
    flavors = [f["name"] for g in queue["ClusterQueue"]["spec"]["resourceGroups"] for f in g["flavors"]]
    assert queue["ResourceFlavor"]["metadata"]["name"] in flavors
    res = run(EX / "kueue" / "critique-run.yaml")
    assert res.spec.resources.queue_name == queue["LocalQueue"]["metadata"]["name"]
    job = build_job(res, "generate-revisions", _plan(res), OperatorConfig())
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "cai" and job["spec"]["suspend"] is True


def _plan(res):
    from cai.controller.observed import FrozenPlan, Storage

    names = tuple(s.name for s in res.info.stages)
    return FrozenPlan(stages=names, outputs={n: f"s3://b/p/{n}" for n in names}, storage=Storage(uri="s3://b/p"))


def test_multi_node_example_is_distributed_and_patches_the_stage_container():
    res = run(EX / "multi-node" / "critique-run.yaml")
    r = res.spec.resources
    assert r.nodes >= 2 and r.gpus_per_node >= 1 and res.spec.finetune.deepspeed
    job = build_job(res, "finetune", _plan(res), OperatorConfig())
    assert job["spec"]["completionMode"] == "Indexed" and job["spec"]["completions"] == r.nodes
    (c,) = job["spec"]["template"]["spec"]["containers"]
    assert c["name"] == CONTAINER, "the podTemplate must name the operator's container, or it adds a second one"
    assert c["resources"]["limits"].get("vpc.amazonaws.com/efa") == "32"
    assert c["resources"]["limits"]["nvidia.com/gpu"] == str(r.gpus_per_node)
    assert any(e["name"] == "FI_PROVIDER" for e in c["env"]) and any(e["name"] == "MASTER_ADDR" for e in c["env"])


def test_gpu_examples_get_the_gpu_image_and_one_gpu():
    config = OperatorConfig(stage_image="reg/cai-trainer:1", stage_image_gpu="reg/cai-trainer-gpu:1")
    for path in sorted((EX / "gpu").glob("*.yaml")):
        for doc in docs(path):
            res, problems = parse_resource(doc, str(path))
            assert res is not None and not problems, problems
            stage = res.info.stages[0].name
            job = build_job(res, stage, _plan(res), config)
            (c,) = job["spec"]["template"]["spec"]["containers"]
            assert c["image"] == "reg/cai-trainer-gpu:1", path
            assert c["resources"]["limits"]["nvidia.com/gpu"] == "1", path


def test_argocd_application_installs_this_chart():
    apps = docs(EX / "gitops" / "argocd-application.yaml")
    chart_app = next(a for a in apps if a["spec"]["source"].get("path") == "charts/cai-operator")
    assert (REPO / chart_app["spec"]["source"]["path"] / "Chart.yaml").exists()
    assert "ServerSideApply=true" in chart_app["spec"]["syncPolicy"]["syncOptions"]
    runs_app = next(a for a in apps if a is not chart_app)
    assert (REPO / runs_app["spec"]["source"]["path"]).is_dir()
    assert int(runs_app["metadata"]["annotations"]["argocd.argoproj.io/sync-wave"]) > 0
