"""The finetune stage's options on a real tiny model: LoRA adapters merged into a loadable model,
and the DeepSpeed ZeRO-2 passthrough (the GPU path) exercised on CPU in one process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from cai.pipeline.stagespec import StageSpec
from cai.store import commit_artifact, read_manifest


def _dataset(tmp_path: Path) -> str:
    work = tmp_path / "dataset-src"
    work.mkdir()
    rows = [{"messages": [{"role": "user", "content": f"Question {i}?"},
                          {"role": "assistant", "content": f"A careful, harmless answer number {i}."}]} for i in range(8)]
    (work / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    uri = (tmp_path / "store" / "dataset").as_uri()
    commit_artifact(work, uri, kind="dataset", producer={"kind": "CritiqueRun", "name": "t", "stage": "generate-revisions"},
                    inputs=[], inputs_digest="x")
    return uri


def _run_finetune(tmp_path: Path, finetune: dict, env: dict | None = None) -> Path:
    spec = StageSpec(
        stage="finetune", kind="CritiqueRun", name="t",
        spec={"constitutionRef": {"name": "c"}, "model": "builtin:tiny-random", "finetune": finetune},
        models={"base": "builtin:tiny-random"}, inputs={"dataset": _dataset(tmp_path)},
        output=(tmp_path / "store" / "model").as_uri(),
    )
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(spec.model_dump_json(by_alias=True))
    r = subprocess.run([sys.executable, "-m", "cai", "stage", "finetune", "--spec", str(spec_file)],
                       capture_output=True, check=False, text=True, env={**os.environ, **(env or {})}, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert read_manifest(spec.output) is not None
    return tmp_path / "store" / "model"


def test_lora_adapters_are_merged_into_a_plain_model(tmp_path, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    out = _run_finetune(tmp_path, {"epochs": 2, "batchSize": 4, "maxLength": 128, "learningRate": 5e-3,
                                   "lora": {"r": 4, "alpha": 8, "targetModules": ["q_proj", "v_proj"]}})
    tuned, base = load_file(out / "model.safetensors"), load_file(tiny_model_dir / "model.safetensors")
    assert not any("lora" in k for k in tuned), "adapters must be merged, not saved separately"
    changed = {k for k in base if not (base[k] == tuned[k]).all()}
    assert changed and all(("q_proj" in k or "v_proj" in k) for k in changed), sorted(changed)
    AutoModelForCausalLM.from_pretrained(out)  # loads as a plain HF model


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_deepspeed_zero2_passthrough_trains_on_cpu(tmp_path, tiny_model_dir):
    env = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}
    out = _run_finetune(tmp_path, {"epochs": 1, "batchSize": 4, "maxLength": 128, "learningRate": 5e-3, "deepspeed": "zero2"}, env)
    tuned, base = load_file(out / "model.safetensors"), load_file(tiny_model_dir / "model.safetensors")
    assert any(not (base[k] == tuned[k]).all() for k in base)
