"""Live update: copy changed source files into every running replica and restart the app process
inside its container, without a new image or a rollout.

To restart the process without restarting the container, devloop starts the container's own
command under a tiny POSIX-sh restart loop (dev only, and only with `liveUpdate.enabled`): the
manifests on disk stay as they are; the applied Deployment runs `sh -c SUPERVISOR -- <command>`.
A container that restarts for any other reason comes back from its image, so `devloop dev`
rebuilds when it sees that happen (see dev.py): synced changes are never silently lost.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

RESTART_FLAG = "/tmp/.devloop-restart"
CHILD_PID = "/tmp/.devloop-child"

# $@ is the container's original command. TERM/INT from the kubelet go to the app and end the loop;
# a restart requested by devloop (flag file + TERM to the child) starts the command again.
SUPERVISOR = f"""trap 'kill -TERM "$child" 2>/dev/null; wait "$child"; exit 143' TERM INT
while :; do
  "$@" &
  child=$!
  echo "$child" > {CHILD_PID}
  wait "$child"; code=$?
  if [ -f {RESTART_FLAG} ]; then rm -f {RESTART_FLAG}; continue; fi
  exit "$code"
done"""

# Run in the app container with the tar on stdin ($1: target dir, $2...: container ports as the
# 4-digit hex /proc/net/tcp uses): unpack, ask for a restart, wait until the supervisor has started
# the new process (its pid changes) and, when the container declares ports, until one listens
# again; at most 30 s each (a restart under a CPU limit on a busy node is slow); exit 3 when it
# never listens. Shell builtins only (read, case) besides `sleep`: under a CPU limit, spawning a
# grep every few ms visibly slows the app's start.
SYNC = f"""set -e
target=$1; shift
tar -xf - -C "$target"
read -r old < {CHILD_PID}
: > {RESTART_FLAG}
kill -TERM "$old"
i=0; new=$old
while [ "$new" = "$old" ] && [ $i -lt 600 ]; do sleep 0.05; read -r new < {CHILD_PID}; i=$((i+1)); done
[ "$new" != "$old" ]
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
until listening "$@"; do [ $i -ge 600 ] && exit 3; sleep 0.05; i=$((i+1)); done"""


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
