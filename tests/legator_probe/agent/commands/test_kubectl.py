"""kubectl commands: a missing binary, and the real kubectl against a tiny local Kubernetes API."""

import json
import os
import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import anyio
import pytest
from tests.legator_probe.agent._support import command_message, running_executor

pytestmark = pytest.mark.anyio

_API: dict[str, object] = {
    "/version": {"major": "1", "minor": "32", "gitVersion": "v1.32.0-legator-test", "platform": "linux/amd64"},
    "/api": {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []},
    "/apis": {"kind": "APIGroupList", "apiVersion": "v1", "groups": []},
    "/api/v1": {
        "kind": "APIResourceList",
        "groupVersion": "v1",
        "resources": [
            {"name": "pods", "singularName": "pod", "namespaced": True, "kind": "Pod", "verbs": ["get", "list"]}
        ],
    },
}


class _KubeAPI(BaseHTTPRequestHandler):
    """Just enough of the Kubernetes API for ``kubectl version`` and ``kubectl get pods -o json``."""

    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        parts = path.strip("/").split("/")
        if path in _API:
            body: object = _API[path]
        elif len(parts) == 5 and parts[:3] == ["api", "v1", "namespaces"] and parts[4] == "pods":
            pod = {"metadata": {"name": "web-1", "namespace": parts[3]}, "status": {"phase": "Running"}}
            body = {"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "1"}, "items": [pod]}
        else:
            self.send_error(404)
            return
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def kube_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        if os.environ.get("CI") == "true":
            pytest.fail("kubectl is required in CI (expected at /usr/bin/kubectl) but is not on PATH")
        pytest.skip("kubectl is not installed (set CI=true to make this a failure)")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _KubeAPI)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "test", "cluster": {"server": f"http://127.0.0.1:{server.server_port}"}}],
                "users": [{"name": "tester", "user": {"token": "kube-token-0123456789abcdef"}}],
                "contexts": [{"name": "test", "context": {"cluster": "test", "user": "tester"}}],
                "current-context": "test",
            }
        ),
        encoding="utf-8",
    )
    try:
        yield {"PATH": str(Path(kubectl).parent), "KUBECONFIG": str(kubeconfig), "HOME": str(tmp_path)}
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


async def _kubectl(env: dict[str, str], spec: dict[str, object]) -> tuple[str, str | None, str]:
    with anyio.fail_after(30):
        async with running_executor(env=env) as (executor, emitter):
            message = command_message("kubectl", spec, timeout_s=25)
            executor.submit(message)
            result = await emitter.wait(message.payload.request_id)
    return result.status, result.error_code, result.stdout


async def test_kubectl_get_pods_as_json_in_a_namespace(kube_env: dict[str, str]) -> None:
    status, _, stdout = await _kubectl(kube_env, {"argv": ["get", "pods", "-o", "json"], "namespace": "demo"})
    assert status == "ok"
    pods = json.loads(stdout)
    assert [(p["metadata"]["name"], p["metadata"]["namespace"]) for p in pods["items"]] == [("web-1", "demo")]


async def test_kubectl_version_reaches_the_server(kube_env: dict[str, str]) -> None:
    status, _, stdout = await _kubectl(kube_env, {"argv": ["version", "-o", "json"], "context": "test"})
    assert status == "ok"
    assert json.loads(stdout)["serverVersion"]["gitVersion"] == "v1.32.0-legator-test"


async def test_a_missing_kubectl_is_unavailable(tmp_path: Path) -> None:
    status, code, _ = await _kubectl({"PATH": str(tmp_path)}, {"argv": ["get", "pods"]})
    assert (status, code) == ("error", "unavailable")
