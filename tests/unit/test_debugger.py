"""`devloop dev --inspect SERVICE` (debugger.py): the dev render opens the Node.js inspector and drops
the liveness probe (a release never does), the preload opens it in the app's node process and not in
npm's, the forward pins one pod and follows rollouts, a taken local port is exit 3 with a hint."""

from __future__ import annotations

import http.server
import io
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from devloop import config as config_mod
from devloop import debugger
from devloop.debugger import InspectorPortTaken, PinnedUpstreams, claim, instrument, node_options, with_inspect
from devloop.errors import EXIT_ENVIRONMENT, ConfigError
from devloop.model import ImageRef
from devloop.output import Output
from tests.unit.fakes import FakeCluster, FakeDocker, FakePublisher, make_engine

REPO = Path(__file__).resolve().parents[2]
NODE = shutil.which("node")


def sample(tmp_path: Path) -> config_mod.Config:
    shutil.copytree(REPO / "sample-app", tmp_path / "sample-app", ignore=shutil.ignore_patterns("node_modules"))
    shutil.copy(REPO / "kind-config.yaml", tmp_path / "kind-config.yaml")
    return config_mod.load(None, tmp_path)


def rendered_container(cfg: config_mod.Config, *, dev: bool) -> dict[str, Any]:
    engine = make_engine(
        cfg, Output(json_mode=True, stdout=io.StringIO()), images=FakeDocker(), kube=FakeCluster(), publisher=FakePublisher()
    )
    svc = engine.config.services[0]
    docs = engine.render(
        svc, engine.manifests(svc), ImageRef("my-web-app", "v1", "localhost:5001"), dev=dev
    )  # pushed to the local registry
    dep = next(d for d in docs if d["kind"] == "Deployment")
    return dict(dep["spec"]["template"]["spec"]["containers"][0])


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env") or []}


def test_the_dev_render_opens_the_inspector_and_drops_the_liveness_probe_only_when_inspecting(tmp_path: Path) -> None:
    cfg = sample(tmp_path)
    plain = rendered_container(cfg, dev=True)
    assert "NODE_OPTIONS" not in env_of(plain) and "livenessProbe" in plain

    inspected = with_inspect(cfg, "web-app", None)
    dev = rendered_container(inspected, dev=True)
    assert env_of(dev)["NODE_OPTIONS"] == node_options(9229)
    assert "livenessProbe" not in dev  # a process paused at a breakpoint must not be killed
    assert dev["readinessProbe"] == plain["readinessProbe"]


def test_a_release_render_never_opens_the_inspector(tmp_path: Path) -> None:
    release = rendered_container(with_inspect(sample(tmp_path), "web-app", None), dev=False)
    assert "NODE_OPTIONS" not in env_of(release)
    assert "livenessProbe" in release


def test_node_options_keep_what_the_manifest_set() -> None:
    c: dict[str, Any] = {"env": [{"name": "NODE_OPTIONS", "value": "--max-old-space-size=256"}, {"name": "A", "value": "1"}]}
    assert instrument(c, 9230) is False  # no liveness probe to drop
    env = env_of(c)
    assert env["A"] == "1"
    assert env["NODE_OPTIONS"].startswith("--max-old-space-size=256 --import=data:text/javascript,")
    assert " " not in env["NODE_OPTIONS"].split(" ", 1)[1]  # one option: NODE_OPTIONS splits on spaces
    from_map: dict[str, Any] = {"env": [{"name": "NODE_OPTIONS", "valueFrom": {"configMapKeyRef": {"name": "n", "key": "k"}}}]}
    instrument(from_map, 9229)
    assert from_map["env"] == [{"name": "NODE_OPTIONS", "value": node_options(9229)}]  # one entry: apply refuses two


@pytest.mark.skipif(NODE is None and not os.environ.get("CI"), reason="node is not installed")
def test_the_preload_opens_the_inspector_in_the_app_and_not_in_npm(tmp_path: Path) -> None:
    """What the container runs: `npm start` is a node process too; only the app gets the inspector."""
    assert NODE is not None, "node is not installed (CI has it)"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = "console.log(JSON.stringify({url: require('inspector').url() || null, marked: process.env.DEVLOOP_INSPECTING || null}))"
    (tmp_path / "app.js").write_text(script)
    (tmp_path / "npm").mkdir()
    (tmp_path / "npm" / "npm-cli.js").write_text(script)
    env = {**os.environ, "NODE_OPTIONS": node_options(port)}
    env.pop("DEVLOOP_INSPECTING", None)

    def run(path: Path) -> dict[str, Any]:
        p = subprocess.run([NODE, str(path)], env=env, capture_output=True, text=True, timeout=30, check=True)
        return dict(json.loads(p.stdout.strip().splitlines()[-1]))

    app = run(tmp_path / "app.js")
    assert app["url"] and f"127.0.0.1:{port}/" in app["url"] and app["marked"]
    npm = run(tmp_path / "npm" / "npm-cli.js")
    assert npm == {"url": None, "marked": None}


def test_the_pin_is_the_newest_ready_pod_and_stays_while_it_is_paused() -> None:
    said: list[tuple[str, int]] = []
    up = PinnedUpstreams(lambda pod, ready: said.append((pod, ready)))
    up.seen("web-a", True, "2026-01-01T10:00:00Z")
    up.seen("web-b", True, "2026-01-01T10:00:05Z")
    up.seen("web-c", True, "2026-01-01T10:00:02Z")
    assert up.ready() == ["web-b"]
    assert said == [("web-b", 3)]  # said once, with how many were Ready
    up.seen("web-b", False)  # paused at a breakpoint: its readiness probe fails
    assert up.ready() == ["web-b"]
    assert said == [("web-b", 3)]


def test_the_pin_follows_a_rollout_once_its_pod_goes_away() -> None:
    said: list[tuple[str, int]] = []
    up = PinnedUpstreams(lambda pod, ready: said.append((pod, ready)))
    up.seen("old-a", True, "2026-01-01T10:00:00Z")
    up.seen("old-b", True, "2026-01-01T10:00:01Z")
    assert up.ready() == ["old-b"]
    up.seen("new-a", True, "2026-01-01T10:01:00Z")  # a rollout's first new replica is Ready
    assert up.ready() == ["old-b"]  # the debugger stays on its process until that goes away
    up.gone("old-a")
    assert up.ready() == ["old-b"]
    up.gone("old-b")
    assert up.ready() == ["new-a"]
    up.seen("new-b", True, "2026-01-01T10:01:05Z")
    assert up.ready() == ["new-a"]  # not once per new replica
    assert said == [("old-b", 2), ("new-a", 1)]
    up.gone("new-a")
    up.gone("new-b")
    assert up.ready() == []
    up.seen("new-c", False, "2026-01-01T10:02:00Z")
    assert up.ready() == []  # none Ready: a new connection waits (the proxy holds it)


def test_a_taken_inspector_port_is_an_environment_error_with_a_hint() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        with pytest.raises(InspectorPortTaken) as e:
            claim(port, "web")
    assert e.value.exit_code == EXIT_ENVIRONMENT == 3
    assert f"127.0.0.1:{port}" in e.value.message and "web" in e.value.message
    assert "--inspect-port" in e.value.hint and "inspect.localPort" in e.value.hint


def test_a_free_inspector_port_is_claimed_and_0_is_any(tmp_path: Path) -> None:
    s = claim(0, "web")
    try:
        assert s.getsockname()[1] > 0
    finally:
        s.close()


def test_inspect_names_a_service_that_devloop_builds(tmp_path: Path) -> None:
    cfg = sample(tmp_path)
    with pytest.raises(ConfigError, match="no such service") as e:
        with_inspect(cfg, "nope", None)
    assert "web-app" in e.value.hint
    with pytest.raises(ConfigError, match="--inspect-port needs --inspect"):
        with_inspect(cfg, None, 9230)
    assert with_inspect(cfg, None, None) is cfg
    svc = with_inspect(cfg, "web-app", 0).service("web-app")
    assert svc.inspect.enabled and svc.inspect.local_port == 0 and svc.inspect.port == debugger.DEFAULT_PORT


def test_inspect_in_devloop_yaml(tmp_path: Path) -> None:
    cfg = sample(tmp_path)
    text = (
        "apiVersion: devloop/v2\nservices:\n  - name: web\n    image: {name: my-web-app, context: sample-app}\n"
        "    deploy: {deployment: web-app}\n    inspect: {enabled: true, localPort: 9300}\n"
    )
    (tmp_path / "devloop.yaml").write_text(text)
    svc = config_mod.load(None, tmp_path).service("web")
    assert svc.inspect.enabled and svc.inspect.local_port == 9300 and svc.inspect.port == 9229
    assert cfg.services[0].inspect.enabled is False  # off by default


# -- the forward, over pods that are local HTTP servers answering as an inspector does --------------


class _Inspector(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps([{"type": "node", "title": self.server.pod}]).encode()  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


class PodsCluster(FakeCluster):
    """Pods whose port 9229 is a local inspector-like server; the pod watch is driven by the test."""

    def __init__(self) -> None:
        super().__init__()
        self.servers: dict[str, http.server.ThreadingHTTPServer] = {}
        self.listed: list[dict[str, Any]] = []
        self.on_event: Any = None

    def pod(self, name: str, ready: bool, created: str) -> dict[str, Any]:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Inspector)
        server.pod = name  # type: ignore[attr-defined]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self.servers[name] = server
        status = "True" if ready else "False"
        return {
            "metadata": {"name": name, "creationTimestamp": created, "labels": {"app": "web"}},
            "status": {"conditions": [{"type": "Ready", "status": status}], "containerStatuses": []},
        }

    def pods(self, namespace: str, labels: Any) -> list[dict[str, Any]]:
        return list(self.listed)

    def watch_pods(self, namespace: str, labels: Any, on_event: Any) -> Any:
        self.on_event = on_event
        return super().watch_pods(namespace, labels, on_event)

    def connect(self, namespace: str, pod: str, port: int, timeout: float = 5.0) -> socket.socket:
        assert port == 9229
        return socket.create_connection(self.servers[pod].server_address[:2], timeout)  # type: ignore[arg-type]

    def close(self) -> None:
        for s in self.servers.values():
            s.shutdown()
            s.server_close()


def said(buf: io.StringIO, n: int) -> list[dict[str, Any]]:
    """The forward's "attach" lines, once there are `n` of them (its check runs in a thread)."""
    deadline = time.monotonic() + 10
    while True:
        lines = [e for e in map(json.loads, buf.getvalue().splitlines()) if e.get("inspector")]
        if len(lines) >= n or time.monotonic() > deadline:
            return lines
        time.sleep(0.02)  # polling the forward's own thread's output, with a deadline


def test_the_inspector_forward_pins_one_of_the_replicas_says_which_and_follows_a_rollout() -> None:
    from devloop.debugger import InspectorForward, inspector_targets
    from devloop.workload import PodEvent

    cluster = PodsCluster()
    cluster.listed = [
        cluster.pod("web-1", True, "2026-01-01T10:00:00Z"),
        cluster.pod("web-2", True, "2026-01-01T10:00:03Z"),
        cluster.pod("web-3", True, "2026-01-01T10:00:01Z"),
    ]
    buf = io.StringIO()
    forward = InspectorForward(cluster, Output(json_mode=True, stdout=buf), "default", {"app": "web"}, 9229, claim(0, "web"), "web")
    try:
        forward.start()
        first = said(buf, 1)
        assert [(e["pod"], e["replicas"]) for e in first] == [("web-2", 3)]
        assert "→ pod web-2 (one of 3 Ready replicas" in first[0]["message"] and "liveness probe is off" in first[0]["message"]
        assert inspector_targets(forward.local_port) == [{"type": "node", "title": "web-2"}]

        new = cluster.pod("web-4", True, "2026-01-01T10:05:00Z")  # a rebuild's first new replica is Ready
        cluster.on_event(PodEvent.of(new))
        assert inspector_targets(forward.local_port) == [{"type": "node", "title": "web-2"}]  # the debugger stays on its process
        cluster.on_event(PodEvent("web-2", 0, (), True))  # ... until its pod is deleted
        assert inspector_targets(forward.local_port) == [{"type": "node", "title": "web-4"}]
        assert [e["pod"] for e in said(buf, 2)] == ["web-2", "web-4"]
    finally:
        forward.stop()
        cluster.close()


@pytest.mark.skipif(NODE is None and not os.environ.get("CI"), reason="node is not installed")
def test_the_preload_waits_for_a_port_the_stopped_process_still_holds(tmp_path: Path) -> None:
    """A live sync's new process may start while the old one still holds the port: it asks again."""
    assert NODE is not None, "node is not installed (CI has it)"
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    held.listen(1)
    port = held.getsockname()[1]
    (tmp_path / "app.js").write_text(
        "const t = setInterval(() => { const u = require('inspector').url(); if (u) { console.log(u); clearInterval(t); process.exit(0); } }, 20);"
        "setTimeout(() => { console.log('none'); process.exit(1); }, 10000);"
    )
    env = {k: v for k, v in os.environ.items() if k != "DEVLOOP_INSPECTING"} | {"NODE_OPTIONS": node_options(port)}
    p = subprocess.Popen([NODE, str(tmp_path / "app.js")], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert p.stderr is not None
        assert "address already in use" in p.stderr.readline()  # its first try failed ...
        held.close()  # ... the old process is gone
        out, _ = p.communicate(timeout=15)
    finally:
        held.close()
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0 and f"127.0.0.1:{port}/" in out, out
