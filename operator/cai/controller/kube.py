"""The only module that talks to the Kubernetes API (besides kopf's own watches).

Where it sits: `controller` and `leader` call these coroutines; `handlers` register `login` with kopf so
kopf and this client authenticate the same way. A thin aiohttp client speaking JSON: no generated
models, so a reconcile costs a few small requests and little memory.

Semantics the controller relies on: `create` treats 409 AlreadyExists as "already there" (and says so),
`patch_status` writes through the status subresource with a resourceVersion precondition (a stale writer
gets `False`, never overwrites newer status), 404s are values (None/False), other errors raise `ApiError`.
Secrets are never read: credentials reach pods only through secretKeyRef.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
import kopf

from ..api.base import API_VERSION

log = logging.getLogger("cai.controller.kube")

Login = Callable[[], Awaitable[kopf.ConnectionInfo]]


class ApiError(Exception):
    """An unexpected API answer; `status` is the HTTP code (0: no answer)."""

    def __init__(self, status: int, reason: str, message: str):
        self.status, self.reason, self.message = status, reason, message
        super().__init__(f"HTTP {status} {reason}: {message}")

    @property
    def transient(self) -> bool:
        return self.status in (0, 408, 429, 500, 502, 503, 504)


def login_sync(settings: kopf.OperatorSettings | None = None) -> kopf.ConnectionInfo:
    """Credentials: in-cluster service account, else KUBECONFIG/~/.kube/config.

    kopf's minimal loaders cover tokens and client certificates without importing the kubernetes
    client (memory); kubeconfigs with exec or auth-provider plugins (EKS, GKE) fall back to it.
    """
    settings = settings or kopf.OperatorSettings()
    if os.environ.get("KUBERNETES_SERVICE_HOST") and not os.environ.get("KUBECONFIG"):
        info = kopf.login_with_service_account(settings=settings)
        if info is not None:
            return info
    if _kubeconfig_needs_plugin():
        info = kopf.login_via_client(settings=settings, logger=log)
    else:
        info = kopf.login_with_kubeconfig(settings=settings)
    if info is None:
        raise kopf.LoginError(
            "no credentials: not in a cluster and no kubeconfig (--kubeconfig or KUBECONFIG)"
        )
    return info


def _kubeconfig_needs_plugin() -> bool:
    import yaml

    path = os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
    try:
        with open(path.split(os.pathsep)[0], encoding="utf-8") as f:
            cfg = yaml.safe_load(f) or {}
    except OSError:
        return False
    ctx_name = cfg.get("current-context")
    ctx = next((c.get("context") or {} for c in cfg.get("contexts") or [] if c.get("name") == ctx_name), {})
    user = next((u.get("user") or {} for u in cfg.get("users") or [] if u.get("name") == ctx.get("user")), {})
    return "exec" in user or (
        "auth-provider" in user and not user["auth-provider"].get("config", {}).get("access-token")
    )


# --------------------------------------------------------------------------------------- paths

_CORE = {"ConfigMap": "configmaps", "Service": "services", "Event": "events", "Pod": "pods"}
_GROUPED = {"Job": ("apis/batch/v1", "jobs"), "Lease": ("apis/coordination.k8s.io/v1", "leases")}


def collection_path(api_version: str, kind: str, namespace: str) -> str:
    ns = quote(namespace, safe="")
    if kind in _CORE:
        return f"/api/v1/namespaces/{ns}/{_CORE[kind]}"
    if kind in _GROUPED:
        prefix, plural = _GROUPED[kind]
        return f"/{prefix}/namespaces/{ns}/{plural}"
    if api_version == API_VERSION:
        from ..api.kinds import KINDS

        return f"/apis/{API_VERSION}/namespaces/{ns}/{KINDS[kind].plural}"
    raise ValueError(f"no API path known for {api_version} {kind}")


def object_path(api_version: str, kind: str, namespace: str, name: str) -> str:
    return f"{collection_path(api_version, kind, namespace)}/{quote(name, safe='')}"


# --------------------------------------------------------------------------------------- client


class KubeClient:
    def __init__(self, login: Login, *, timeout: float = 30.0, user_agent: str = "cai-operator"):
        self._login = login
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None
        self._server = ""
        self._lock = asyncio.Lock()
        self._user_agent = user_agent
        self.requests = 0  # for tests and the benchmark

    async def _connect(self, force: bool = False) -> aiohttp.ClientSession:
        async with self._lock:
            if self._session is not None and not force:
                return self._session
            info = await self._login()
            if self._session is not None:
                await self._session.close()
            headers = {"User-Agent": self._user_agent, "Accept": "application/json", **info.as_http_headers()}
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=32, ssl=info.as_ssl_context()),
                headers=headers, timeout=self._timeout, trust_env=info.trust_env)
            self._server = info.server.rstrip("/")
            return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        params: dict[str, str] | None = None,
        content_type: str = "application/json",
        ok: tuple[int, ...] = (200, 201),
    ) -> tuple[int, Any]:
        """(status, decoded body). Statuses in `ok`, 404 and 409 are returned; others raise ApiError."""
        data = None if body is None else json.dumps(body)
        for attempt in (1, 2):
            session = await self._connect(force=attempt == 2)
            url = self._server + path + (("?" + urlencode(params)) if params else "")
            self.requests += 1
            try:
                async with session.request(method, url, data=data,
                                           headers={"Content-Type": content_type} if data else None) as resp:
                    raw = await resp.read()
                    status = resp.status
            except (TimeoutError, aiohttp.ClientError) as e:
                raise ApiError(0, type(e).__name__, str(e) or "no answer") from e
            if status == 401 and attempt == 1:
                continue  # expired token (rotated service-account token, exec plugin): log in again
            decoded: Any = None
            if raw:
                try:
                    decoded = json.loads(raw)
                except ValueError:
                    decoded = raw.decode(errors="replace")
            if status in ok or status in (404, 409):
                return status, decoded
            reason = decoded.get("reason", "") if isinstance(decoded, dict) else ""
            message = decoded.get("message", "") if isinstance(decoded, dict) else str(decoded)[:500]
            raise ApiError(status, reason, message)
        raise AssertionError("unreachable")

    # ---- objects

    async def create(self, obj: dict[str, Any]) -> tuple[bool, dict[str, Any] | None]:
        """(True, created) or (False, None) when an object of that name already exists (409)."""
        meta = obj["metadata"]
        status, body = await self.request(
            "POST", collection_path(obj["apiVersion"], obj["kind"], meta["namespace"]), obj
        )
        if status == 409 and isinstance(body, dict) and body.get("reason") == "AlreadyExists":
            return False, None
        if status == 409 or status == 404:
            reason = body.get("reason", "") if isinstance(body, dict) else ""
            message = body.get("message", "") if isinstance(body, dict) else str(body)
            raise ApiError(status, reason, message)  # e.g. namespace terminating
        return True, body

    async def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        status, body = await self.request("GET", object_path(api_version, kind, namespace, name))
        return None if status == 404 else body

    async def patch(
        self, api_version: str, kind: str, namespace: str, name: str, patch: dict[str, Any]
    ) -> bool:
        """JSON merge patch; False if the object is gone."""
        status, _ = await self.request("PATCH", object_path(api_version, kind, namespace, name), patch,
                                       content_type="application/merge-patch+json")
        if status == 409:
            raise ApiError(409, "Conflict", f"patching {kind}/{name}")
        return status != 404

    async def patch_status(self, kind: str, namespace: str, name: str, resource_version: str,
                           status_patch: dict[str, Any]) -> bool:
        """Merge-patch `.status` if the object is still at `resource_version`; False on conflict or 404."""
        body = {"metadata": {"resourceVersion": resource_version}, "status": status_patch}
        code, _ = await self.request(
            "PATCH",
            object_path(API_VERSION, kind, namespace, name) + "/status",
            body,
            content_type="application/merge-patch+json",
        )
        return code == 200

    async def list(
        self, api_version: str, kind: str, namespace: str, label_selector: str = "", field_selector: str = ""
    ) -> list[dict[str, Any]]:
        selectors = (("labelSelector", label_selector), ("fieldSelector", field_selector))
        params = {k: v for k, v in selectors if v}
        _, body = await self.request("GET", collection_path(api_version, kind, namespace), params=params)
        return list((body or {}).get("items") or [])

    async def post_event(self, event: dict[str, Any]) -> None:
        try:
            await self.create(event)
        except ApiError as e:  # events are best-effort: never fail a reconcile over one
            log.warning("could not post event %s on %s: %s", event.get("reason"),
                        event.get("involvedObject", {}).get("name"), e)

    async def replace(self, obj: dict[str, Any]) -> dict[str, Any] | None:
        """PUT (optimistic concurrency through metadata.resourceVersion); None on 409/404."""
        meta = obj["metadata"]
        status, body = await self.request(
            "PUT", object_path(obj["apiVersion"], obj["kind"], meta["namespace"], meta["name"]), obj
        )
        return None if status in (404, 409) else body
