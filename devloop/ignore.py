"""Which paths reach the image: the context's .dockerignore (docker's own matcher) plus rules
devloop always applies to the watcher (.git, node_modules, editor temp files). Pure: the caller
reads the .dockerignore file; nothing here touches the disk.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from functools import cached_property

from docker.utils.build import PatternMatcher

# Never a reason to rebuild, whatever .dockerignore says.
ALWAYS_IGNORED_DIRS = (".git", "node_modules", ".hg", ".svn", ".idea", ".vscode", "__pycache__")
EDITOR_TEMP_FILES = (
    "*.swp", "*.swx", "*.swo", ".*.sw?", "*~", ".#*", "#*#", "4913", ".DS_Store", "*.tmp", "*.crswap", ".goutputstream-*",
    "*___jb_tmp___", "*___jb_old___",
)  # fmt: skip


def parse_dockerignore(text: str) -> list[str]:
    """The patterns of a .dockerignore file, read exactly as the docker SDK reads them."""
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


@dataclass(frozen=True)
class IgnoreRules:
    dockerignore: tuple[str, ...] = ()
    dockerfile: str = "Dockerfile"
    extra: tuple[str, ...] = ()  # watch.ignore from devloop.yaml

    @cached_property
    def _matcher(self) -> PatternMatcher:
        # docker always sends the Dockerfile, whatever .dockerignore says
        return PatternMatcher([*self.dockerignore, f"!{self.dockerfile}"])

    def always_ignored(self, relpath: str) -> bool:
        parts = relpath.split("/")
        if any(p in ALWAYS_IGNORED_DIRS for p in parts):
            return True
        name = parts[-1]
        if any(fnmatch.fnmatchcase(name, pat) for pat in EDITOR_TEMP_FILES):
            return True
        return any(fnmatch.fnmatchcase(relpath, pat) or fnmatch.fnmatchcase(name, pat) for pat in self.extra)

    def ignored_dir(self, relpath: str) -> bool:
        """A directory the watcher need not watch at all (no file below it can matter)."""
        return any(p in ALWAYS_IGNORED_DIRS for p in relpath.split("/"))

    def reaches_image(self, relpath: str) -> bool:
        """True when a change to this context-relative path can change the built image."""
        if not relpath or relpath == "." or self.always_ignored(relpath):
            return False
        return not self._matcher.matches(relpath)
