"""The results store on a git branch: the nightly workflow commits each sitting to a branch of its
own (never the default branch) and pushes it; the layout inside the branch is the directory
store's (`<profile>/<host>/<time>-<run_id>.json`).

Writing uses git plumbing only, with no work tree and no checkout: the sitting's blob
(`git hash-object -w`), a tree built in a temporary index from the branch's tip
(`read-tree`, `update-index --add`, `write-tree`), a commit on the tip (`commit-tree`) and a
compare-and-swap of the ref (`git update-ref refs/heads/B NEW OLD`). A branch that moved between
reading the tip and the swap is detected by git; the sitting is added again on the new tip (a
few times), else a BranchMovedError says so. The ref never moves to a commit that lacks any
sitting it had: nothing another writer stored is lost, and a sitting is in the branch whole or
not at all.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

from ..results import dump_json
from .store import HistoryError, Loaded, Sitting, parse_sitting, sort_sittings

PROTECTED = ("main", "master")
ZERO = "0" * 40


class BranchMovedError(HistoryError):
    """The store's branch kept moving under the writer: the sitting was not added (nothing lost)."""


class GitBranchStore:
    """A results store on branch `branch` of the git repository at `repo` (bare or not)."""

    def __init__(self, repo: str | Path, branch: str):
        self.repo = Path(repo)
        self.branch = branch
        self.ref = f"refs/heads/{branch}"
        refused = set(PROTECTED) | {b for b in (self._default_branch(),) if b}
        if branch in refused or not branch or branch.startswith("-"):
            raise HistoryError(f"refusing to keep the results store on branch {branch!r}: it is the default branch "
                               f"or one of {', '.join(PROTECTED)}; name a branch of its own (e.g. quantperf-history)")
        if self._git("check-ref-format", self.ref, check=False).returncode != 0:
            raise HistoryError(f"{branch!r} is not a valid git branch name")

    def _git(self, *args: str, input: str | None = None, env: dict | None = None, check: bool = True):
        try:
            out = subprocess.run(["git", "-C", str(self.repo), *args], input=input, capture_output=True, text=True,
                                 env={**os.environ, **(env or {})}, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise HistoryError(f"git {args[0]} in {self.repo} failed: {exc}") from None
        if check and out.returncode != 0:
            raise HistoryError(f"git {' '.join(args[:2])} in {self.repo} failed: {out.stderr.strip()[:300]}")
        return out

    def _default_branch(self) -> str | None:
        """The repository's default branch: origin's HEAD, else a bare repository's HEAD, else
        init.defaultBranch."""
        for args in (("symbolic-ref", "--quiet", "refs/remotes/origin/HEAD"),):
            out = self._git(*args, check=False)
            if out.returncode == 0 and out.stdout.strip():
                return out.stdout.strip().rsplit("/", 1)[-1]
        if self._git("rev-parse", "--is-bare-repository", check=False).stdout.strip() == "true":
            out = self._git("symbolic-ref", "--quiet", "HEAD", check=False)
            if out.returncode == 0:
                return out.stdout.strip().removeprefix("refs/heads/")
        out = self._git("config", "init.defaultBranch", check=False)
        return out.stdout.strip() or None

    def tip(self) -> str | None:
        out = self._git("rev-parse", "--verify", "--quiet", self.ref + "^{commit}", check=False)
        return out.stdout.strip() or None if out.returncode == 0 else None

    def append(self, sitting: Sitting, retries: int = 3, _before_swap=None) -> str:
        """Commit one sitting to the branch; returns the new commit. `_before_swap(store)` is a
        test hook run between building the commit and swapping the ref."""
        path = sitting.relpath
        text = dump_json(sitting.to_dict())
        for _attempt in range(retries + 1):
            old = self.tip()
            if old is not None:
                there = self._git("cat-file", "-p", f"{old}:{path}", check=False)
                if there.returncode == 0:
                    if there.stdout == text:
                        return old
                    raise HistoryError(f"{self.branch}:{path}: a different sitting with this run id and time is "
                                       "already stored; the store is append-only: nothing was written")
            blob = self._git("hash-object", "-w", "--stdin", input=text).stdout.strip()
            with tempfile.TemporaryDirectory(prefix="quantperf-history-") as tmp:
                env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
                if old is not None:
                    self._git("read-tree", old, env=env)
                self._git("update-index", "--add", "--cacheinfo", f"100644,{blob},{path}", env=env)
                tree = self._git("write-tree", env=env).stdout.strip()
            ident = {"GIT_AUTHOR_NAME": "quantperf", "GIT_AUTHOR_EMAIL": "quantperf@localhost",
                     "GIT_COMMITTER_NAME": "quantperf", "GIT_COMMITTER_EMAIL": "quantperf@localhost"}
            parents = ["-p", old] if old else []
            commit = self._git("commit-tree", tree, *parents, "-m", f"quantperf sitting {path}",
                               env=ident).stdout.strip()
            if _before_swap is not None:
                _before_swap(self)
            swapped = self._git("update-ref", "-m", "quantperf: add a sitting", self.ref, commit, old or ZERO,
                                check=False)
            if swapped.returncode == 0:
                return commit
        raise BranchMovedError(f"{self.branch}: the branch moved under this writer {retries + 1} times (another "
                               "writer is adding sittings); this sitting was not added and nothing stored was lost: "
                               "run again")

    def read(self, profile: str, host: str | None = None, strict: bool = True) -> Loaded:
        """The sittings of a profile on the branch (all hosts, or one), oldest first."""
        tip = self.tip()
        if tip is None:
            return Loaded([])
        prefix = f"{profile}/{host}/" if host else f"{profile}/"
        names = self._git("ls-tree", "-r", "--name-only", tip, "--", prefix).stdout.split("\n")
        out, skipped = [], []
        for name in filter(None, names):
            if not name.endswith(".json"):
                continue
            where = f"{self.branch}:{name}"
            try:
                out.append(parse_sitting(self._git("cat-file", "-p", f"{tip}:{name}").stdout, where))
            except HistoryError as exc:
                if strict:
                    raise
                skipped.append(str(exc))
        return Loaded(sort_sittings(out), skipped)
