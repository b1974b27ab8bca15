"""Live update: copy changed source files into every running replica and restart the app process
inside its container, without a new image or a rollout.

To restart the process without restarting the container, devloop starts the container's own
command under a tiny POSIX-sh restart loop (dev only, and only with `liveUpdate.enabled`): the
manifests on disk stay as they are; the applied Deployment runs `sh -c SUPERVISOR -- <command>`.
A container that restarts for any other reason comes back from its image, so `devloop dev`
rebuilds when it sees that happen (see session.py): synced changes are never silently lost.

`LiveSync` does one sync: every ready replica of the good version gets the files over its exec
channel (one replica first, alone, then the others together), restarts paced for the liveness
probes; anything that makes the sync dishonest raises `NoSync` and the service rebuilds instead.
Build steps (`liveUpdate.run`: tsc, npm ci) run in the pod between the copy and the restart; one that
fails in the first replica raises `RunFailed`: nothing restarted, nothing rebuilt.
"""

from __future__ import annotations

import base64
import contextlib
import io
import shlex
import tarfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from devloop.errors import CommandFailed, CycleFailed, DevloopError
from devloop.proc import SIGNAL_CHECK
from devloop.workload import pod_images, pod_name, pod_ready

if TYPE_CHECKING:
    from devloop.config import ServiceConfig
    from devloop.model import ServiceState
    from devloop.output import Output
    from devloop.ports import Cluster
    from devloop.project import Deployed
    from devloop.rollout import Rollout

T = TypeVar("T")

RESTART_FLAG = "/tmp/.devloop-restart"
CHILD_PID = "/tmp/.devloop-child"  # "<pid> <generation>" of the app process the supervisor started last
SUPERVISOR_PID = "/tmp/.devloop-supervisor"
LISTEN_JS = "/tmp/.devloop-listen.js"  # the preload below, written by the supervisor
UP = "/tmp/.devloop-up"  # the generation of the app process that last started listening (written by the preload)
FAILED = "/tmp/.devloop-failed"  # "<generation> <exit code>" of a new process that ended while the one it replaces ran

GO = "/tmp/.devloop-go"  # + ".<generation>": the FIFO a spare process waits on (one per spare; it removes it)

# Make-before-break restarts for Node.js apps. Every node process the supervisor starts preloads this
# (NODE_OPTIONS --require; CommonJS, any Node version); it acts in the app's own process only (not in
# npm, npx, yarn, pnpm), which takes the DEVLOOP_* variables out of its environment:
#   - a server whose port is still held by the process it replaces (DEVLOOP_REPLACES, its pid) asks
#     that process to stop (SIGTERM: a graceful app closes its listener at once, then drains) and
#     tries the port again every 2 ms for 30 s instead of failing with EADDRINUSE (Node documents
#     listen() again after an error). The new process loads while the old one serves; the port is
#     unanswered only from the old listener's close to the new one's (milliseconds: a liveness probe
#     no longer lands in a restart, no pacing is needed);
#   - on its first 'listening' it writes its generation to UP (the sync knows the new code answers)
#     and, once the process it replaced is gone, asks the supervisor (USR2) for a spare;
#   - a spare (DEVLOOP_GO) is the next process started ahead: Node's own start-up done, it waits on
#     the GO FIFO before the app's code is read, so a restart costs only the app's own start.
# No single quotes in here (sh printf '...').
LISTEN_PRELOAD = f"""(() => {{
  const net = require("net"), fs = require("fs"), env = process.env;
  const base = (process.argv[1] || "").split("/").pop();
  if (/^(npm|npx|yarn|pnpm|corepack)(-cli)?([.]c?js)?$/.test(base) || !env.DEVLOOP_GEN) return;
  const gen = env.DEVLOOP_GEN, old = Number(env.DEVLOOP_REPLACES || 0), sup = Number(env.DEVLOOP_SUPERVISOR || 0), go = env.DEVLOOP_GO;
  for (const k of ["DEVLOOP_GEN", "DEVLOOP_REPLACES", "DEVLOOP_SUPERVISOR", "DEVLOOP_GO"]) delete env[k];
  if (go) {{ try {{ fs.readFileSync(go); }} catch (_) {{}} try {{ fs.unlinkSync(go); }} catch (_) {{}} }}
  const listen = net.Server.prototype.listen, emit = net.Server.prototype.emit;
  let until = 0, asked = false, up = false;
  net.Server.prototype.listen = function (...args) {{
    this.__devloopListen = args.filter((a) => typeof a !== "function");
    return listen.apply(this, args);
  }};
  net.Server.prototype.emit = function (event, ...rest) {{
    const e = rest[0];
    if (event === "error" && e && e.code === "EADDRINUSE" && old > 0 && this.__devloopListen) {{
      until = until || Date.now() + 30000;
      if (Date.now() < until) {{
        if (!asked) {{ asked = true; try {{ process.kill(old, "SIGTERM"); }} catch (_) {{}} }}
        setTimeout(() => listen.apply(this, this.__devloopListen), 2);
        return true;
      }}
    }}
    if (event === "listening" && !up) {{
      up = true;
      try {{ fs.writeFileSync("{UP}", gen + "\\n"); }} catch (_) {{}}
      const since = Date.now(), t = setInterval(() => {{
        try {{ if (old > 0) {{ process.kill(old, 0); if (Date.now() - since < 30000) return; }} }} catch (_) {{}}
        clearInterval(t);
        try {{ if (sup > 0) process.kill(sup, "SIGUSR2"); }} catch (_) {{}}
      }}, 20);
      t.unref();
    }}
    return emit.call(this, event, ...rest);
  }};
}})();"""

# $@ is the container's original command. TERM/INT from the kubelet go to the app and end the loop.
# Two ways devloop restarts the app: USR1, make-before-break (a Node.js app that preloads
# LISTEN_PRELOAD: the spare, or a new process, is started beside the running one and takes its port
# over; one that ends while the old one runs leaves the old one serving, and says so in FAILED), or a
# flag file + TERM to the child (stop, then start: any other program). USR2 starts a spare (mkfifo
# needed). `wait` returns early on a trapped signal; one that comes outside it is acted on next turn.
# No "$$" in here: the kubelet expands a container's command, "$$" to "$" ("$(x)" to the env var x).
SUPERVISOR = f"""trap 'kill -TERM "$child" $old $spare 2>/dev/null; wait "$child"; exit 143' TERM INT
trap 'next=1' USR1
trap 'more=1' USR2
read -r me _ < /proc/self/stat && echo "$me" > {SUPERVISOR_PID}
warm=
if printf '%s\\n' '{LISTEN_PRELOAD}' > {LISTEN_JS} 2>/dev/null; then
  export NODE_OPTIONS="${{NODE_OPTIONS:+$NODE_OPTIONS }}--require {LISTEN_JS}" DEVLOOP_SUPERVISOR="$me"
  command -v mkfifo >/dev/null 2>&1 && warm=1
fi
gen=1; old=; spare=; spare_for=; spare_go=; next=; more=
DEVLOOP_GEN=$gen "$@" &
child=$!
echo "$child $gen" > {CHILD_PID}
while :; do
  [ -n "$next$more" ] || {{ wait "$child"; code=$?; }}
  if [ -n "$next" ]; then
    next=; old=$child; gen=$((gen+1))
    if [ -n "$spare" ] && [ "$spare_for" = "$old" ] && kill -0 "$spare" 2>/dev/null; then
      child=$spare
      echo go > "$spare_go" &
    else
      [ -n "$spare" ] && kill -TERM "$spare" 2>/dev/null && rm -f "$spare_go"
      DEVLOOP_GEN=$gen DEVLOOP_REPLACES=$old "$@" &
      child=$!
    fi
    spare=
    echo "$child $gen" > {CHILD_PID}
    continue
  fi
  if [ -n "$more" ]; then
    more=
    if [ -n "$warm" ] && [ -z "$spare" ] && spare_go={GO}.$((gen+1)) && rm -f "$spare_go" && mkfifo -m 600 "$spare_go"; then
      DEVLOOP_GEN=$((gen+1)) DEVLOOP_REPLACES=$child DEVLOOP_GO="$spare_go" "$@" &
      spare=$!; spare_for=$child
    fi
    continue
  fi
  if [ -n "$old" ] && kill -0 "$old" 2>/dev/null; then
    echo "$gen $code" > {FAILED}
    child=$old; old=
    echo "$child $gen" > {CHILD_PID}
    continue
  fi
  old=
  if [ -f {RESTART_FLAG} ]; then
    rm -f {RESTART_FLAG}; gen=$((gen+1))
    DEVLOOP_GEN=$gen "$@" &
    child=$!
    echo "$child $gen" > {CHILD_PID}
    continue
  fi
  [ -n "$spare" ] && kill -TERM "$spare" 2>/dev/null && rm -f "$spare_go"
  exit "$code"
done"""

# liveUpdate.run, inside SYNC after the unpack: `steps` decodes to one `step N argv...` line per step
# (steps_script). Each step runs in the target directory as the container's user, its output (both
# streams) on stderr between RUN markers that devloop reads (RunLog); the first failing step ends
# the sync with exit 4 before the app is asked to restart: the old process keeps running.
RUN = "@@devloop-run"
RUN_STEPS = f"""if [ "$steps" != - ]; then
  script=$(printf '%s' "$steps" | base64 -d) || fail "cannot decode the liveUpdate.run steps (no base64 in the image?)"
  step() {{
    n=$1; shift; echo "{RUN} start $n" >&2
    "$@" </dev/null >&2 2>&1; rc=$?
    printf '\n%s end %s %s\n' "{RUN}" "$n" "$rc" >&2; return $rc
  }}
  (cd "$target" && eval "$script") || exit 4
fi"""

# Run in the app container with the tar on stdin ($1: target dir, $2: the liveUpdate.run steps as a
# base64 sh script or "-", $3...: container ports as the 4-digit hex /proc/net/tcp uses): unpack, run
# the steps in the target directory (one failing: exit 4, no restart), then restart the app and wait
# until the new process answers; it says which way on stderr ("{RESTART} overlap|stop-start").
#   overlap (no run steps in this sync, the supervisor writes its pid, and the running process
#     listened through the preload; a sync with liveUpdate.run steps restarts stop-start: with them
#     the new code was seen served late, issue 22's note):
#     USR1 asks for the new process beside the old one; done when the preload says the new generation
#     listens (the old one is asked to stop then, in any case); a new process that ends first leaves
#     the old one serving (exit 5); one that never listens within 30 s is stopped (exit 3).
#   stop-start (any other program): TERM the child, wait until the supervisor has started the new
#     one (its pid changes; the TERM is sent again every second, as one sent right after a restart
#     can be lost) and, when the container declares ports, until one listens again; 30 s each.
# Any failure says why on stderr (devloop shows it). A read that finds a state file empty (torn, the
# supervisor rewrites it in place) means "not yet". Shell builtins only (read, case) besides `sleep`:
# under a CPU limit, spawning a grep every few ms visibly slows the app's start.
RESTART = "@@devloop-restart"
SYNC = f"""fail() {{ echo "devloop sync: $*" >&2; exit "${{code:-1}}"; }}
target=$1; steps=$2; shift 2
tar -xf - -C "$target" || fail "cannot unpack the files into $target"
{RUN_STEPS}
read -r old gen < {CHILD_PID} || fail "no app process started by the devloop supervisor ({CHILD_PID} missing)"
if [ "$steps" = - ] && [ -n "$gen" ] && [ -s {UP} ] && read -r sup < {SUPERVISOR_PID}; then
  echo "{RESTART} overlap" >&2
  want=$((gen+1)); i=0
  kill -USR1 "$sup" || fail "the devloop supervisor ($sup) is gone"
  while :; do
    read -r up < {UP} || up=
    [ "${{up:-0}}" -ge "$want" ] 2>/dev/null && break
    if [ -f {FAILED} ] && read -r fgen fcode < {FAILED} && [ "$fgen" = "$want" ]; then
      code=5 fail "the new app process exited (code $fcode) before it listened; the one before keeps serving"
    fi
    read -r now _ < {CHILD_PID} || now=$old
    if [ $i -ge 1500 ]; then
      [ "$now" != "$old" ] && kill -TERM "$now" 2>/dev/null
      code=3 fail "the new app process does not listen after 30s (stopped; the one before keeps serving)"
    fi
    # a USR1 that came before the supervisor was waiting again is lost: say it again each second
    [ "$now" = "$old" ] && [ $((i % 50)) -eq 49 ] && kill -USR1 "$sup" 2>/dev/null
    i=$((i+1)); sleep 0.02
  done
  # the new process answers; the one before was asked to stop when the port was taken: wait until it
  # is gone (at most 30 s, asked again each second), so that no connection it still holds is taken for the new code
  kill -TERM "$old" 2>/dev/null; i=0
  while kill -0 "$old" 2>/dev/null && [ $i -lt 600 ]; do
    sleep 0.05; i=$((i+1)); [ $((i % 20)) -eq 0 ] && kill -TERM "$old" 2>/dev/null
  done
  exit 0
fi
echo "{RESTART} stop-start" >&2
: > {RESTART_FLAG} || fail "cannot write {RESTART_FLAG}"
kill -TERM "$old" || fail "the app process $old was already gone"
i=0; new=$old
while [ "$new" = "$old" ] && [ $i -lt 600 ]; do
  sleep 0.05; read -r new _ < {CHILD_PID} || new=$old; i=$((i+1))
  # a TERM that reaches a process just forked by the supervisor (before its exec) can be lost: say it again each second
  if [ "$new" = "$old" ] && [ $((i % 20)) -eq 0 ]; then kill -TERM "$old" 2>/dev/null; fi
done
[ "$new" != "$old" ] || fail "the app process $old did not exit within 30s of SIGTERM"
[ $# -eq 0 ] && exit 0
listening() {{
  for f in /proc/net/tcp /proc/net/tcp6; do
    [ -r "$f" ] || continue
    while read -r _ addr _ st _; do
      for port in "$@"; do case "$addr $st" in *":$port 0A") return 0;; esac; done
    done < "$f"
  done
  return 1
}}
i=0
until listening "$@"; do [ $i -ge 600 ] && code=3 fail "the restarted app does not listen after 30s"; sleep 0.05; i=$((i+1)); done"""


# Volumes a container can never write to, whatever the mount says.
READ_ONLY_VOLUMES = ("configMap", "secret", "downwardAPI", "projected")


def _writable(path: str, pod: Mapping[str, Any], container: Mapping[str, Any]) -> bool:
    """Whether the container can write under `path`: the volume mounted deepest above it is
    writable, or no volume is and the root filesystem is not read-only."""
    volumes = {str(v.get("name")): v for v in pod.get("volumes") or [] if isinstance(v, dict)}
    best: tuple[int, bool] | None = None
    for m in container.get("volumeMounts") or []:
        mount = str(m.get("mountPath") or "").rstrip("/") or "/"
        if path == mount or path.startswith(mount.rstrip("/") + "/"):
            volume = volumes.get(str(m.get("name")), {})
            ok = not m.get("readOnly") and not any(k in volume for k in READ_ONLY_VOLUMES)
            if best is None or len(mount) > best[0]:
                best = (len(mount), ok)
    if best is not None:
        return best[1]
    return not (container.get("securityContext") or {}).get("readOnlyRootFilesystem")


def cannot_write(containers: Iterable[tuple[Mapping[str, Any], Mapping[str, Any]]], target: str) -> str | None:
    """Why live update cannot work in these (pod spec, container) pairs, read from the spec: the
    restart loop writes its pid file and restart flag in /tmp, and a sync unpacks into `target`.
    Under `readOnlyRootFilesystem: true` each needs a writable volume mounted there (an emptyDir);
    a read-only volume (a ConfigMap) at `target` blocks it too. None when every one can."""
    for pod, c in containers:
        ro = bool((c.get("securityContext") or {}).get("readOnlyRootFilesystem"))
        name = c.get("name", "?")
        if not _writable("/tmp", pod, c):
            return f"container {name} cannot write /tmp (readOnlyRootFilesystem: true, no writable volume there)"
        if not _writable(target, pod, c):
            why = "readOnlyRootFilesystem: true, no writable volume there" if ro else "a read-only volume is mounted there"
            return f"container {name} cannot write {target}, where the files are synced ({why})"
    return None


def port_args(container: dict[str, Any]) -> list[str]:
    """The container's TCP ports in /proc/net/tcp's notation (3000 -> 0BB8)."""
    ports = [p.get("containerPort") for p in container.get("ports") or [] if str(p.get("protocol", "TCP")).upper() == "TCP"]
    return [f"{int(p):04X}" for p in ports if isinstance(p, int)]


SUPERVISOR_NAME = "devloop-supervisor"


def wrap(command: Sequence[str]) -> tuple[list[str], list[str]]:
    """(command, args) for a container that runs `command` under the restart loop."""
    return ["/bin/sh", "-c", SUPERVISOR, SUPERVISOR_NAME], list(command)


def original_command(container: dict[str, Any], entrypoint: Sequence[str], cmd: Sequence[str]) -> list[str]:
    """What the container would run: Kubernetes' command/args override the image's ENTRYPOINT/CMD."""
    if container.get("command"):
        return [*container["command"], *(container.get("args") or [])]
    if container.get("args"):
        return [*entrypoint, *container["args"]]
    return [*entrypoint, *cmd]


def tar_files(context: Path, files: Sequence[str]) -> bytes:
    """A tar of these context-relative files (regular files only, no directory entries)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for rel in files:
            path = context / rel
            info = tar.gettarinfo(str(path), arcname=rel)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            with path.open("rb") as f:
                tar.addfile(info, f)
    return buf.getvalue()


# -- restarts that a liveness probe tolerates ----------------------------------------------------------
# While the app process restarts (old one gone, new one not listening yet), the kubelet's liveness
# probe gets "connection refused"; `failureThreshold` failures in a row and the kubelet kills the
# container, which comes back from its image without the synced files. One restart is far shorter
# than a probe period, but restarts back to back (saves faster than a probe period) can make every
# probe land in one. The probe is left as it is (it must still catch a hung app); devloop paces the
# restarts so that it can never see `failureThreshold` failures in a row:
#   - a burst of restarts lasts less than (failureThreshold - 1) periods: at most failureThreshold - 1
#     probes land in it;
#   - then the app stays up longer than one period: at least one probe lands there and succeeds.
# Rapid saves are therefore synced at once for about (failureThreshold - 1) periods (20 s with the
# sample's 10 s x 3); after that a sync waits until the app has been up one period.
MARGIN = 1.0  # seconds: the probe's own duration, clock skew between devloop and the kubelet
# A replica devloop restarted may fail a readiness probe or two (the kubelet marks it ready again at
# its next probe): the next sync waits up to this long for it rather than rebuilding.
READY_AGAIN = 30.0


@dataclass(frozen=True)
class Budget:
    """How restarts must be spaced for a liveness probe: bursts shorter than `burst` seconds,
    separated by `quiet` seconds up. `probe` says which probe, for the output."""

    burst: float
    quiet: float
    probe: str


def restart_budget(containers: Iterable[dict[str, Any]]) -> Budget | None:
    """The strictest budget of these containers' liveness probes (None: no liveness probe).
    Kubernetes' defaults: periodSeconds 10, failureThreshold 3."""
    found: list[Budget] = []
    for c in containers:
        probe = c.get("livenessProbe")
        if not isinstance(probe, dict):
            continue
        period = float(probe.get("periodSeconds") or 10)
        failures = int(probe.get("failureThreshold") or 3)
        found.append(
            Budget(
                burst=max(0.0, (failures - 1) * period - MARGIN),
                quiet=period + MARGIN,
                probe=f"liveness probe every {period:g}s, {failures} failures",
            )
        )
    if not found:
        return None
    return Budget(min(b.burst for b in found), max(b.quiet for b in found), min(found, key=lambda b: b.burst).probe)


@dataclass
class _Restarts:
    burst_start: float  # the first restart of the current burst began
    last_up: float  # the last restart ended (the new process listens)
    duration: float  # how long the last restart took


KEEP_PODS = 256  # a long session's rollouts name new pods; the pacer remembers only recent ones


class RestartPacer:
    """Per pod: when the last restarts happened; how long to wait before the next one (thread-safe:
    one sync restarts every replica at once, one thread each)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], Any] = time.sleep) -> None:
        self.clock = clock
        self.sleep = sleep
        self._pods: dict[str, _Restarts] = {}
        self._lock = threading.Lock()

    def delay(self, pod: str, budget: Budget | None) -> float:
        """Seconds to wait before restarting the app in `pod` now."""
        with self._lock:
            r = self._pods.get(pod)
        if budget is None or r is None:
            return 0.0
        now = self.clock()
        if now - r.last_up >= budget.quiet:
            return 0.0  # up a whole period since: a new burst
        if now + r.duration - r.burst_start <= budget.burst:
            return 0.0  # still within this burst
        return r.last_up + budget.quiet - now

    def restart(self, pod: str, budget: Budget | None, run: Callable[[], T], stop: threading.Event | None = None) -> tuple[T, float]:
        """Wait as `delay` says, then `run()` (the restart; it returns once the new process listens).
        Returns run's result and the seconds waited."""
        waited = self.delay(pod, budget)
        if waited > 0:
            if stop is not None:
                stop.wait(waited)
            else:
                self.sleep(waited)
        began = self.clock()
        result = run()
        up = self.clock()
        with self._lock:
            r = self._pods.get(pod)
            new_burst = r is None or budget is None or began - r.last_up >= budget.quiet
            self._pods.pop(pod, None)  # newest last: pods of old rollouts age out below
            self._pods[pod] = _Restarts(began if new_burst or r is None else r.burst_start, up, up - began)
            while len(self._pods) > KEEP_PODS:
                self._pods.pop(next(iter(self._pods)))
        return result, waited

    def recent(self, pods: Iterable[str], within: float) -> bool:
        """Every one of these pods had its app restarted by devloop less than `within` seconds ago."""
        now = self.clock()
        with self._lock:
            return all(p in self._pods and now - self._pods[p].last_up < within for p in pods)

    def forget_except(self, pods: Iterable[str]) -> None:
        """Drop pods that are gone (a rollout replaces every pod: the table stays as small as the replicas)."""
        keep = set(pods)
        with self._lock:
            self._pods = {p: r for p, r in self._pods.items() if p in keep}


# -- one exec channel per pod ------------------------------------------------------------------------
# A sync used to start `kubectl exec` per replica (a process, a TLS handshake and a shell each time).
# Now each replica keeps one exec open (a websocket on the API client's connection) running AGENT,
# a shell loop: per sync devloop writes two lines (the target directory and ports; the tar, base64)
# and reads the SYNC script's output up to a DONE line with its exit code. A channel that fails is
# dropped and the sync goes through a one-shot exec as before; so does a payload too large for a line.
DONE = "@@devloop-sync"
READY = "@@devloop-agent"
AGENT = f"""command -v base64 >/dev/null 2>&1 || {{ echo "{READY} no-base64"; exit 0; }}
echo "{READY} ok"
while IFS= read -r hdr && IFS= read -r data; do
  printf '%s' "$data" | base64 -d | (set -f; set -- $hdr; {SYNC}
) 2>&1
  echo "{DONE} $?"
done"""
CHANNEL_MAX = 256 * 1024  # bytes of tar: larger payloads go through a one-shot exec (a shell reads a line byte by byte)


class ChannelFailed(Exception):
    """The channel is not usable (closed, no answer, no base64 in the image): use a one-shot exec."""


class SyncFailed(Exception):
    """The sync script ran and failed (exit code, its last lines; `log`: what its run steps said)."""

    def __init__(self, code: int, lines: list[str], log: RunLog | None = None) -> None:
        super().__init__(f"exit {code}")
        self.code = code
        self.lines = lines
        self.log = log


FIRST_LINES = 10  # of a failing run step's output, in the cycle's failure (all of it streams as it comes)
RUN_TIMEOUT = 300.0  # seconds the run steps of one sync may take, on top of the copy and restart


def steps_script(steps: Sequence[tuple[int, Sequence[str]]]) -> str:
    """RUN_STEPS' script: one `step N argv...` line per (index, argv), each word quoted for sh."""
    return "".join(f"step {n} {shlex.join(argv)} || exit 1\n" for n, argv in steps)


class RunLog:
    """Reads the sync's output line by line: run step output goes to `on_line` as it comes (and its
    first lines are kept), the sync's own messages are kept apart; a step that failed is noted."""

    def __init__(self, on_line: Callable[[str], None] = lambda line: None) -> None:
        self.on_line = on_line
        self.step: int | None = None  # the step running
        self.first: dict[int, list[str]] = {}  # each step's first lines
        self.failed: tuple[int, int] | None = None  # (step, exit code)
        self.said: list[str] = []  # the sync script's own lines
        self.restart = ""  # how the app was restarted: "overlap" or "stop-start" (SYNC says so)

    def feed(self, line: str) -> None:
        line = line.rstrip("\r\n")
        if line.startswith(RESTART + " "):
            self.restart = line.split()[-1]
            return
        if line.startswith(RUN + " "):
            word = line.split()
            if len(word) >= 3 and word[1] == "start" and word[2].isdigit():
                self.step = int(word[2])
                self.first[self.step] = []
            elif len(word) >= 4 and word[1] == "end" and word[2].isdigit() and word[3].isdigit():
                if word[3] != "0":
                    self.failed = (int(word[2]), int(word[3]))
                self.step = None
            return
        if not line.strip():
            return
        if self.step is None:
            self.said.append(line.strip())
            return
        if len(self.first[self.step]) < FIRST_LINES:
            self.first[self.step].append(line)
        self.on_line(line)


class Channel:
    """One replica's exec channel running AGENT."""

    def __init__(self, stream: Any, timeout: float = 15.0) -> None:
        self.stream = stream
        self.lock = threading.Lock()
        line = self._line(timeout)
        if line is None or not line.startswith(READY):
            self.close()
            raise ChannelFailed(f"the agent did not start ({line!r})")
        if line.split()[-1] != "ok":
            self.close()
            raise ChannelFailed("the image has no base64")

    def _line(self, timeout: float) -> str | None:
        deadline = time.monotonic() + timeout
        while True:  # what the exec printed before it ended is read first: a closed stream may still hold it
            try:
                line = self.stream.readline_stdout(timeout=min(1.0, max(0.01, deadline - time.monotonic())))
            except Exception:  # the websocket failed while reading
                return None
            if line is not None:
                return str(line)
            if not self.stream.is_open() or time.monotonic() >= deadline:
                return None

    def sync(
        self, target: str, ports: Sequence[str], payload: bytes, timeout: float = 75.0, steps: str = "-", log: RunLog | None = None
    ) -> None:
        """Run SYNC in the pod with this payload (and run steps, `steps`: base64, "-" for none, their
        output to `log`); raises SyncFailed (the script failed) or ChannelFailed (no answer: the
        channel is broken, nothing is known about the pod)."""
        log = log or RunLog()
        with self.lock:
            if not self.stream.is_open():
                raise ChannelFailed("the channel closed")
            try:
                self.stream.write_stdin(" ".join([target, steps, *ports]) + "\n" + base64.b64encode(payload).decode() + "\n")
            except Exception as e:  # the websocket closed under us (a pod that went away)
                self.close()
                raise ChannelFailed(f"the channel closed ({type(e).__name__})") from e
            deadline = time.monotonic() + timeout
            while True:
                line = self._line(max(0.01, deadline - time.monotonic()))
                if line is None:
                    self.close()
                    raise ChannelFailed("the channel gave no answer" if time.monotonic() < deadline else f"no answer in {timeout:.0f}s")
                if line.startswith(DONE):
                    code = int(line.split()[-1]) if line.split()[-1].isdigit() else 1
                    if code != 0:
                        raise SyncFailed(code, log.said[-3:], log)
                    return
                log.feed(line)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.stream.close()


class Channels:
    """The open channels, per pod; opened on first use (or ahead with `prepare`), dropped with their pod."""

    def __init__(self, open_stream: Callable[[str, str, list[str]], Any]) -> None:
        self.open_stream = open_stream  # (pod, namespace, argv) -> ExecStream
        self._channels: dict[str, Channel] = {}
        self._lock = threading.Lock()

    def get(self, pod: str, namespace: str) -> Channel:
        with self._lock:
            ch = self._channels.get(pod)
        if ch is not None and ch.stream.is_open():
            return ch
        try:
            ch = Channel(self.open_stream(pod, namespace, ["sh", "-c", AGENT]))
        except ChannelFailed:
            raise
        except Exception as e:  # the exec itself could not start
            raise ChannelFailed(str(e) or type(e).__name__) from e
        with self._lock:
            old = self._channels.pop(pod, None)
            self._channels[pod] = ch
        if old is not None:
            old.close()
        return ch

    def drop(self, pod: str) -> None:
        with self._lock:
            ch = self._channels.pop(pod, None)
        if ch is not None:
            ch.close()

    def prepare(self, pods: Iterable[str], namespace: str) -> None:
        """Open channels to these pods in the background (the first sync then needs no handshake)."""
        for pod in pods:
            threading.Thread(target=self._try, args=(pod, namespace), daemon=True, name=f"channel-{pod}").start()

    def _try(self, pod: str, namespace: str) -> None:
        with contextlib.suppress(ChannelFailed):
            self.get(pod, namespace)

    def keep_only(self, pods: Iterable[str]) -> None:
        keep = set(pods)
        with self._lock:
            gone = [p for p in self._channels if p not in keep]
        for p in gone:
            self.drop(p)

    def close(self) -> None:
        with self._lock:
            channels, self._channels = self._channels, {}
        for ch in channels.values():
            ch.close()


class NoSync(Exception):
    """A live update cannot be done honestly here; the service rebuilds instead."""


class RunFailed(CycleFailed):
    """A liveUpdate.run step failed in the first replica: no replica was restarted (the app runs its
    previous code), the files were copied there; the next sync runs the step again. No rebuild."""

    def __init__(self, message: str, hint: str, details: list[str], outcome: str, phase: str = "run") -> None:
        super().__init__(phase, message, hint, details)
        self.outcome = outcome


NOT_STARTED = 5  # SYNC's exit: the new app process ended before it listened; the one before serves


def start_failure(pods: Sequence[str], replicas: int, e: SyncFailed) -> RunFailed:
    """The new process ended before it listened in these replicas (make-before-break restart; all of
    them, or the first one tried alone): their old processes keep serving, no other replica was
    touched; the next save sends the files again. No rebuild: an image with this code would fail its
    rollout the same way."""
    where = pods[0] if len(pods) == 1 else f"all {len(pods)} replicas"
    others = "; the other replicas were not touched" if len(pods) < replicas else ""
    why = e.lines[-1].removeprefix("devloop sync: ") if e.lines else f"exit {e.code}"
    return RunFailed(
        f"the app did not start with this save in {where}: {why}",
        "its output is in the pod's log above; fix it and save: the files go again on the next save",
        [],
        f"the process from before this save keeps serving in {where} (it was never stopped){others}",
        phase="start",
    )


def run_failure(svc: ServiceConfig, pod: str, log: RunLog) -> RunFailed | None:
    """The failure a run step's exit makes: one line, a hint, the step's first lines."""
    if log.failed is None:
        return None
    n, code = log.failed
    argv = svc.live_update.run[n].cmd
    what = f"liveUpdate.run[{n}] `{shlex.join(argv)}`"
    outcome = f"the app was not restarted: {pod} runs the code it ran before this save"
    failed = (
        f"{what} failed in {pod} (exit {code})",
        "fix it and save: the step runs again on the next save; until then the app keeps its previous code",
    )
    message, hint = {
        127: (
            f"{what}: {argv[0]} not found in {pod} (exit 127)",
            f"install {argv[0]} in the image (its Dockerfile), or change liveUpdate.run[{n}].cmd (an argv list, run without a shell)",
        ),
        126: (
            f"{what}: {argv[0]} cannot be executed in {pod} (exit 126)",
            f"make it executable for the container's user, or change liveUpdate.run[{n}].cmd",
        ),
    }.get(code, failed)
    return RunFailed(message, hint, log.first.get(n, []), outcome)


class LiveSync:
    def __init__(self, kube: Cluster, out: Output, rollout: Rollout, clock: Callable[[], float], stop: threading.Event) -> None:
        self.kube = kube
        self.out = out
        self.rollout = rollout
        self.clock = clock
        self._stop = stop
        self.restarts = RestartPacer(clock)  # restarts paced for the liveness probes
        self.channels = Channels(lambda pod, ns, argv: kube.exec_stream(pod, ns, argv))  # one exec channel per replica
        self._said_channel = False
        # service → why live update cannot work in its pods (cannot_write); each service's key is read and
        # written only by that service's own cycle thread (render, then sync), never by another
        self._blocked: dict[str, str] = {}
        # service → its last sync restarted every replica make-before-break (same ownership as _blocked)
        self._overlap: dict[str, bool] = {}

    def close(self) -> None:
        self.channels.close()

    def possible(self, svc: ServiceConfig, containers: Iterable[tuple[Mapping[str, Any], Mapping[str, Any]]]) -> bool:
        """Whether live update can work in the service's pods as their spec says (cannot_write):
        when it cannot, the command is not wrapped, every save rebuilds, and that is said once (a
        warning, before the first save), again only when the reason changes."""
        why = cannot_write(containers, svc.live_update.target)
        if why is None:
            self._blocked.pop(svc.name, None)
            return True
        if self._blocked.get(svc.name) != why:
            self.out.warn(
                f"{svc.name}: live update cannot work in this pod: {why}; each save rebuilds the image instead",
                f"mount an emptyDir at /tmp and at {svc.live_update.target}, or set liveUpdate.enabled: false to silence this",
            )
        self._blocked[svc.name] = why
        return False

    def blocked(self, service: str) -> bool:
        """Live update was found impossible in this service's pods (possible() said why)."""
        return service in self._blocked

    def _replicas(self, deployed: Deployed, st: ServiceState) -> list[str]:
        """Every replica runs the good version and is ready (a replica devloop itself just restarted
        may fail a readiness probe or two: wait for it, not rebuild); else NoSync."""
        assert st.good is not None
        ns, want, good = deployed.namespace, deployed.replicas, st.good.cluster
        deadline = self.clock() + READY_AGAIN
        feed = self.kube.changes(ns)
        while True:
            seen = feed.generation
            pods = [p for p in self.kube.pods(ns, deployed.selector) if not p.get("metadata", {}).get("deletionTimestamp")]
            current = [p for p in pods if good in pod_images(p)]
            unready = [pod_name(p) for p in current if not pod_ready(p)]
            if len(current) == want and len(pods) == want and not unready:
                return [pod_name(p) for p in current]
            mine = len(current) == want and len(pods) == want and self.restarts.recent(unready, READY_AGAIN)
            if not mine or self.clock() >= deadline or self.rollout.next_change(feed, seen):
                raise NoSync(f"{sum(pod_ready(p) for p in current)}/{want} replicas ready")

    def sync(
        self, svc: ServiceConfig, deployed: Deployed, st: ServiceState, files: tuple[str, ...], run: tuple[int, ...] = ()
    ) -> list[str]:
        """Copy files into every ready replica, run the liveUpdate.run steps `run` there, and restart
        the app. Returns the pods, or raises NoSync when a full rebuild is the honest path (pods not
        all ready, exec failed), or RunFailed when a step failed in the first replica (none restarted)."""
        if svc.name in self._blocked:
            raise NoSync(self._blocked[svc.name])
        if st.good is None or not st.healthy:
            raise NoSync("no healthy version deployed yet")
        ns = deployed.namespace
        names = self._replicas(deployed, st)
        containers = deployed.containers(svc.built.name)
        try:
            payload = tar_files(svc.built.context, files)
        except OSError as e:  # a file deleted (or unreadable) between the plan and the sync: the image has the truth
            raise NoSync(f"{Path(e.filename or '?').name}: {e.strerror or e} since the change was seen") from None
        ports = [port for c in containers for port in port_args(c)]
        budget = restart_budget(containers)
        self.restarts.forget_except(names)
        self.channels.keep_only(names)
        errors: list[str] = []
        waited: list[float] = []
        target = svc.live_update.target
        steps = base64.b64encode(steps_script([(n, svc.live_update.run[n].cmd) for n in run]).encode()).decode() if run else "-"
        timeout = 75.0 + (RUN_TIMEOUT if run else 0.0)
        failed: list[RunFailed] = []
        not_started: list[SyncFailed] = []
        modes: list[str] = []  # how each replica's app was restarted
        if self._overlap.get(svc.name):
            budget = None  # make-before-break: the port is unanswered for milliseconds, no probe to pace for

        def sync_in(pod: str) -> RunLog:
            """The sync in one replica: over its exec channel, else a one-shot exec."""
            log = RunLog(lambda line: self.out.pod_log(pod, line, service=svc.name))
            if len(payload) <= CHANNEL_MAX and not any(c.isspace() for c in target):
                try:
                    self.channels.get(pod, ns).sync(target, ports, payload, timeout, steps, log)
                    return log
                except ChannelFailed as e:
                    self.channels.drop(pod)
                    if not self._said_channel:
                        self._said_channel = True
                        self.out.detail(f"{svc.name}: no exec channel to {pod} ({e}); syncing with one-shot execs", service=svc.name)
            try:
                self.kube.exec(pod, ns, ["sh", "-c", SYNC, "sh", target, steps, *ports], stdin=payload, timeout=timeout)
            except CommandFailed as e:  # the steps' output came on stderr, after the fact
                for line in e.stderr.splitlines():
                    log.feed(line)
                if log.failed is not None or e.returncode == NOT_STARTED:
                    raise SyncFailed(e.returncode, log.said[-3:], log) from None
                raise
            return log

        def one(pod: str) -> None:
            try:
                log, w = self.restarts.restart(pod, budget, lambda: sync_in(pod), self._stop)
                waited.append(w)
                modes.append(log.restart)
            except SyncFailed as e:
                failure = run_failure(svc, pod, e.log) if e.log is not None else None
                if failure is not None and pod == names[0]:
                    failed.append(failure)  # the first replica: nothing restarted anywhere
                    return
                if e.code == NOT_STARTED:
                    not_started.append(e)
                    return
                errors.append(f"{pod}: the sync in the pod failed (exit {e.code})" + (f" ({' / '.join(e.lines)})" if e.lines else ""))
            except DevloopError as e:
                said = [line for line in str(getattr(e, "stderr", "")).splitlines() if line.strip()][-3:]
                errors.append(f"{pod}: {e.message}" + (f" ({' / '.join(said)})" if said else ""))
            except Exception as e:  # never a sync reported done when it was not: an unexpected error means a rebuild
                errors.append(f"{pod}: {type(e).__name__}: {e}")

        def together(pods: Sequence[str]) -> None:
            threads = [threading.Thread(target=one, args=(n,)) for n in pods]
            for t in threads:
                t.start()
            for t in threads:
                while t.is_alive():
                    t.join(SIGNAL_CHECK)  # bounded: a Ctrl-C is acted on meanwhile

        if self._overlap.get(svc.name) and not run:
            # make-before-break restarts (seen in this service's last sync): every old process serves
            # until its new one listens, so every replica restarts at once
            together(names)
        else:
            # one replica first, alone: a failing run step stops there (nothing restarted anywhere),
            # and a stop-start restart has the CPU to itself; then the others together
            if names:
                one(names[0])
            if failed:
                raise failed[0]
            if not_started:
                raise start_failure(names[:1], len(names), not_started[0])
            if not errors:
                together(names[1:])
        if not_started and len(not_started) == len(names):
            raise start_failure(names, len(names), not_started[0])
        if not_started:
            said = not_started[0].lines[-1] if not_started[0].lines else f"exit {not_started[0].code}"
            errors.append(f"{len(not_started)} of {len(names)} replicas did not start the new code ({said})")
        self._overlap[svc.name] = bool(modes) and all(m == "overlap" for m in modes)
        if errors:
            raise NoSync(errors[0])
        if budget is not None and max(waited, default=0.0) > 0:
            self.out.detail(
                f"{svc.name}: waited {max(waited):.1f}s before restarting the app: saves came faster than the "
                f"{budget.probe} tolerates restarts",
                service=svc.name,
            )
        return names
