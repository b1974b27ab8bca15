"""The session's loop at its boundary: events put into `session.queue`, the plans handed to the engine.

The engine is `RecordingEngine` (tests/unit/fakes.py); the project is a copy of examples/shop with
two services: web (live update on) and api. The debounce is 0, so each `step` takes what was
queued as one batch, at once, and handles it on the test's thread.
"""

from __future__ import annotations

import io
import json
import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from devloop import config
from devloop.forward import PortForward
from devloop.model import ImageRef
from devloop.output import Output
from devloop.plan import Change, Plan, ServiceChange, everything
from devloop.session import ApiBack, DevSession, PodChanged, RebuildNow, Seen
from devloop.workload import PodEvent
from tests.unit.fakes import FakeCluster, RecordingEngine

REPO = Path(__file__).resolve().parents[2]

DEVLOOP_YAML = """\
apiVersion: devloop/v2
cluster:
  kindConfig: ../kind-config.yaml
watch:
  debounceMs: 0
services:
  - name: web
    image: {name: shop-web, context: web}
    deploy: {manifests: [k8s/web.yaml], deployment: web}
    liveUpdate: {enabled: true}
  - name: api
    image: {name: shop-api, context: api}
    deploy: {manifests: [k8s/api.yaml], deployment: api}
"""


class Clock:
    """The session's clock: it moves only when the test (or the engine's cycle) moves it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Bench:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.buf = io.StringIO()
        self.clock = Clock()
        self.cluster = FakeCluster()
        self.engine = RecordingEngine(config.load(None, root), Output(json_mode=True, stdout=self.buf), self.cluster)
        self.made: list[PortForward] = []  # every forward the session made, in order
        self.session = DevSession(self.engine, clock=self.clock, forward=self.forward)

    def forward(self, *args: Any, **kwargs: Any) -> PortForward:
        """A real forward (its listener on 127.0.0.1) to the fake cluster, whose Services it does not find: it listens and waits."""
        made = PortForward(*args, **kwargs)
        self.made.append(made)
        return made

    def path(self, service: str, rel: str) -> str:
        return str(Path(self.engine.config.service(service).built.context) / rel)

    def save(self, path: str, at: float | None = None) -> None:
        self.session.queue.put(Seen(Change(path), self.clock.now if at is None else at))

    def step(self) -> list[Plan]:
        """Handle what was queued as one batch; the plans the engine got from it."""
        before = len(self.engine.plans)
        batch = self.session.queue.get_batch()
        assert batch, "nothing was queued"
        self.session._handle(batch)
        return self.engine.plans[before:]

    def reload(self, text: str) -> list[Plan]:
        """devloop.yaml saved with `text`: the reload and its cycle; the plans the engine got."""
        devloop_yaml = self.root / "devloop.yaml"
        devloop_yaml.write_text(text)
        self.save(str(devloop_yaml.resolve()))
        return self.step()

    def events(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in map(json.loads, self.buf.getvalue().splitlines()) if e["event"] == kind]

    def deploy(self, service: str, ref: ImageRef, namespace: str = "default") -> list[str]:
        """The fake cluster runs `ref` for the service (its Deployment applied); its pods."""
        svc = self.engine.config.service(service)
        docs = list(yaml.safe_load_all(svc.manifests[0].read_text()))
        for doc in docs:
            if doc and doc["kind"] == "Deployment":
                doc["spec"]["template"]["spec"]["containers"][0]["image"] = ref.cluster
        self.cluster.apply(docs, namespace)
        return [p["metadata"]["name"] for p in self.cluster.pods(namespace, {"app": svc.deployment})]


@pytest.fixture
def bench(tmp_path: Path) -> Iterator[Bench]:
    root = tmp_path / "shop"
    shutil.copytree(REPO / "examples" / "shop", root)
    shutil.copy(REPO / "kind-config.yaml", tmp_path / "kind-config.yaml")
    (root / "devloop.yaml").write_text(DEVLOOP_YAML)
    b = Bench(root)
    yield b
    b.session.stop()


def forwarded(*local_ports: int, namespace: str = "") -> str:
    """DEVLOOP_YAML with api's port 80 forwarded to each of these local ports (and api in `namespace`)."""
    text = DEVLOOP_YAML.replace("deployment: api}", f"deployment: api, namespace: {namespace}}}") if namespace else DEVLOOP_YAML
    return text + "    portForward:\n" + "".join(f"      - {{service: api, port: 80, localPort: {p}}}\n" for p in local_ports)


def free_ports(n: int) -> list[int]:
    """n distinct ports free on 127.0.0.1 (all bound at once, then released)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def accepts(port: int) -> bool:
    """Does something listen on 127.0.0.1:port (a TCP connect, as a browser's)?"""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except ConnectionRefusedError:
        return False
    return True


def rebuild(service: str, reason: str) -> ServiceChange:
    return ServiceChange(service, rebuild=True, reapply=True, reason=reason)


def test_a_save_runs_the_plan_for_its_service_and_publishes_what_runs(bench: Bench) -> None:
    bench.save(bench.path("api", "server.js"))
    assert bench.step() == [Plan(services=(ServiceChange("api", rebuild=True, image_files=("server.js",), reason="image source changed"),))]
    api = bench.session.board.view.service("api")
    assert (api.good, api.applied, api.healthy) == ("localhost:5001/shop-api:dl-1", "localhost:5001/shop-api:dl-1", True)
    assert bench.session.board.view.service("web").good is None  # not part of this cycle

    bench.save(bench.path("web", "server.js"))  # live update on: a sync
    (sync,) = bench.step()
    assert sync == Plan(services=(ServiceChange("web", sync=("server.js",), image_files=("server.js",), reason="live update"),))


def test_a_batch_with_nothing_to_do_calls_no_engine(bench: Bench) -> None:
    bench.save(str(bench.root / "README.md"))
    bench.save(bench.path("web", "README.md"))  # in a context, but .dockerignore keeps it out of the image
    bench.save(str(bench.root / "README.md"))  # saved twice in the batch: named once
    assert bench.step() == []
    (skipped,) = bench.events("skipped")
    assert skipped["reason"] == "not part of any image or manifests"
    assert skipped["files"] == ["README.md", "web/README.md"]  # relative to the project, each once
    bench.session.queue.put(RebuildNow("nope"))  # a service the configuration does not have
    assert bench.step() == []


def test_a_devloop_yaml_save_reloads_then_reapplies_every_service(bench: Bench) -> None:
    devloop_yaml = bench.root / "devloop.yaml"
    devloop_yaml.write_text(DEVLOOP_YAML.replace("watch:\n", "watch:\n  ignore: ['*.log']\n"))
    bench.save(str(devloop_yaml.resolve()))
    bench.save(bench.path("api", "server.js"))  # in the same batch: the reload re-applies it anyway
    plans = bench.step()
    (reloaded,) = bench.engine.reconfigured
    assert reloaded.watch.ignore == ("*.log",)
    assert plans == [everything(bench.engine.layouts(), "configuration changed", ("devloop.yaml",))]
    assert [(c.service, c.rebuild, c.reapply) for c in plans[0].services] == [("web", True, True), ("api", True, True)]
    assert all(c.trigger_files == ("devloop.yaml",) for c in plans[0].services)  # the reload's cycle names its trigger
    assert any(e["message"] == "configuration reloaded from devloop.yaml" for e in bench.events("info"))


def test_a_broken_devloop_yaml_keeps_the_configuration_and_runs_nothing(bench: Bench) -> None:
    devloop_yaml = bench.root / "devloop.yaml"
    devloop_yaml.write_text(DEVLOOP_YAML.replace("debounceMs: 0", "debounceMs: soon"))
    bench.save(str(devloop_yaml.resolve()))
    assert bench.step() == [] and bench.engine.reconfigured == []
    assert any(e["message"] == "keeping the previous configuration" for e in bench.events("warning"))


def test_rebuild_now_is_a_forced_rebuild_merged_with_the_batch(bench: Bench) -> None:
    bench.save(bench.path("web", "server.js"))  # would be a sync ...
    bench.save(bench.path("api", "server.js"))
    bench.session.request_rebuild("web")  # ... but the dashboard asked for a rebuild
    (todo,) = bench.step()
    assert todo.services == (
        rebuild("web", "rebuild requested from the dashboard"),
        ServiceChange("api", rebuild=True, image_files=("server.js",), reason="image source changed"),
    )


def test_a_live_synced_pod_that_restarted_is_rebuilt(bench: Bench) -> None:
    good = ImageRef("shop-web", "dl-0", "localhost:5001")
    bench.engine.state["web"].rolled_out(good, "1")
    pods = bench.deploy("web", good)
    bench.save(bench.path("web", "server.js"))
    (synced,) = bench.step()
    assert synced.services[0].sync == ("server.js",)

    pod = pods[0]
    bench.session.queue.put(PodChanged("web", PodEvent(pod, 0, (good.cluster,), False)))  # readiness flapping: same restarts
    assert bench.step() == []
    bench.session.queue.put(PodChanged("web", PodEvent(pod, 1, (good.cluster,), False)))  # its container restarted
    assert bench.step() == [Plan(services=(rebuild("web", "a live-updated pod restarted"),))]
    assert any(f"pod {pod} restarted" in e["message"] for e in bench.events("warning"))


def test_a_pod_event_without_synced_files_is_no_cycle(bench: Bench) -> None:
    good = ImageRef("shop-web", "dl-0", "localhost:5001")
    bench.engine.state["web"].rolled_out(good, "1")
    (pod, *_) = bench.deploy("web", good)
    bench.session.queue.put(PodChanged("web", PodEvent(pod, 3, (good.cluster,), False)))
    assert bench.step() == []


def test_api_back_restarts_an_ended_pod_watch_and_runs_no_cycle(bench: Bench) -> None:
    good = ImageRef("shop-web", "dl-0", "localhost:5001")
    bench.engine.state["web"].rolled_out(good, "1")
    bench.deploy("web", good)
    bench.save(bench.path("web", "server.js"))
    bench.step()  # a sync: the session now watches web's pods
    (watch,) = [bg for bg in bench.cluster.spawned if bg.argv[0] == "watch"]
    watch.stop()  # it ended with the API server
    bench.session.queue.put(ApiBack(30.0))
    assert bench.step() == []
    watches = [bg for bg in bench.cluster.spawned if bg.argv[0] == "watch"]
    assert len(watches) == 2 and watches[1].alive()


def test_the_loop_guard_pauses_a_file_the_build_rewrites(bench: Bench) -> None:
    generated = bench.path("api", "server.js")

    def build_rewrites(plan: Plan) -> None:  # a tool that rewrites a source file whenever a build starts
        bench.clock.now += 0.5
        bench.save(generated)
        bench.clock.now += 10.0

    bench.engine.during = build_rewrites
    bench.save(generated)
    for _ in range(3):
        assert len(bench.step()) == 1
    assert bench.step() == []  # the third rewrite in a row inside the build's first second: paused
    (warning,) = bench.events("warning")
    assert warning["message"].startswith(f"paused rebuilds from {Path('api', 'server.js')}")

    bench.clock.now += 60.0  # a person saving it while devloop is idle: resumed
    bench.engine.during = lambda plan: None
    bench.save(generated)
    assert len(bench.step()) == 1


def test_a_devloop_yaml_save_keeps_an_unchanged_forward_bound_through_the_reload_cycle(bench: Bench) -> None:
    (port,) = free_ports(1)
    bench.reload(forwarded(port))  # a forward added: made and started when the reload's cycle has api ready
    (forward,) = bench.made
    assert accepts(port)
    during: list[bool] = []
    bench.engine.during = lambda plan: during.append(accepts(port))  # the old version still serves while the cycle runs
    bench.reload(forwarded(port).replace("watch:\n", "watch:\n  ignore: ['*.log']\n"))  # nothing about the forward changed
    assert during == [True]
    assert bench.made == [forward] and accepts(port)  # the very same listener, never closed
    assert [f.url for f in bench.session.board.view.service("api").forwards] == [f"http://127.0.0.1:{port}"]


def test_a_reload_rebinds_a_changed_local_port_and_keeps_the_other_forward(bench: Bench) -> None:
    kept, old, new = free_ports(3)
    bench.reload(forwarded(kept, old))
    during: list[tuple[bool, bool]] = []
    bench.engine.during = lambda plan: during.append((accepts(kept), accepts(old)))
    bench.reload(forwarded(kept, new))
    assert during == [(True, False)]  # the changed forward's old port is released at once, the other one stays
    assert [f.local_port for f in bench.made] == [kept, old, new]  # only the changed forward was made again
    assert accepts(kept) and accepts(new) and not accepts(old)
    shown = [f.url for f in bench.session.board.view.service("api").forwards]
    assert shown == [f"http://127.0.0.1:{kept}", f"http://127.0.0.1:{new}"]  # the page lists the forwards devloop runs, not the old one


def test_a_reload_closes_a_removed_forward_and_the_forwards_of_a_removed_service(bench: Bench) -> None:
    kept, removed = free_ports(2)
    bench.reload(forwarded(kept, removed))
    during: list[tuple[bool, bool]] = []
    bench.engine.during = lambda plan: during.append((accepts(kept), accepts(removed)))
    bench.reload(forwarded(kept))
    assert during == [(True, False)]
    assert len(bench.made) == 2 and accepts(kept) and not accepts(removed)
    assert [f.url for f in bench.session.board.view.service("api").forwards] == [f"http://127.0.0.1:{kept}"]  # the removed one's URL goes

    bench.engine.during = lambda plan: None
    bench.reload(DEVLOOP_YAML[: DEVLOOP_YAML.index("  - name: api")])  # api removed from the configuration: its URL goes too
    assert not accepts(kept)
    assert any(e["message"].startswith("service api removed from the configuration") for e in bench.events("info"))


def test_the_dashboards_pod_table_follows_the_services_through_a_reload(bench: Bench) -> None:
    pods = bench.deploy("api", ImageRef("shop-api", "dl-0", "localhost:5001"))
    changed = threading.Condition()

    def note() -> None:
        with changed:
            changed.notify_all()

    def shown(want: list[str]) -> None:
        with changed:
            assert changed.wait_for(lambda: [p.name for p in bench.session.board.view.service("api").pods] == want, 10.0)

    bench.session.board.watch(note)
    bench.session.start_poller()
    shown(pods)  # listed when followed: no timer
    moved = bench.deploy("api", ImageRef("shop-api", "dl-0", "localhost:5001"), namespace="dev")
    bench.reload(DEVLOOP_YAML.replace("deployment: api}", "deployment: api, namespace: dev}"))
    shown(moved)  # the reload moved api: its table is the new namespace's
    watches = [(bg.argv[1], bg.alive()) for bg in bench.cluster.spawned if bg.argv[0] == "watch"]
    assert ("default", False) in watches and ("dev", True) in watches


def test_log_streams_outlive_a_reload_and_follow_a_namespace_change(bench: Bench) -> None:
    (port,) = free_ports(1)
    pods = bench.deploy("api", ImageRef("shop-api", "dl-0", "localhost:5001"))
    bench.reload(forwarded(port))

    def streams() -> list[tuple[str, str, bool]]:
        return [(bg.argv[1], bg.argv[2], bg.alive()) for bg in bench.cluster.spawned if bg.argv[0] == "logs"]

    assert streams() == [("default", pod, True) for pod in pods]
    bench.reload(forwarded(port).replace("watch:\n", "watch:\n  ignore: ['*.log']\n"))
    assert streams() == [("default", pod, True) for pod in pods]  # the same streams: no line lost, none printed twice

    moved = bench.deploy("api", ImageRef("shop-api", "dl-0", "localhost:5001"), namespace="dev")
    bench.reload(forwarded(port, namespace="dev"))
    assert streams() == [("default", pod, False) for pod in pods] + [("dev", pod, True) for pod in moved]
    assert [(f.namespace, f.local_port) for f in bench.made] == [("default", port), ("dev", port)]  # rebound in the new namespace
    assert accepts(port)
