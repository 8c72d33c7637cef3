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

`push(remote)` pushes the branch without force; when another runner pushed first, the remote's
branch is fetched, this branch's sittings it lacks are committed on top of it, and the push is
tried again.
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
IDENTITY = {"GIT_AUTHOR_NAME": "quantperf", "GIT_AUTHOR_EMAIL": "quantperf@localhost",
            "GIT_COMMITTER_NAME": "quantperf", "GIT_COMMITTER_EMAIL": "quantperf@localhost"}


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
        bare = self._git("rev-parse", "--is-bare-repository", check=False).stdout.strip() == "true"
        if not bare and self._git("symbolic-ref", "--quiet", "HEAD", check=False).stdout.strip() == self.ref:
            raise HistoryError(f"refusing to keep the results store on branch {branch!r}: it is checked out in "
                               f"{self.repo}, whose work tree would fall behind; use a branch that is not checked out")

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
        out = self._git("symbolic-ref", "--quiet", "refs/remotes/origin/HEAD", check=False)
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

    def _commit_onto(self, old: str | None, files: list[tuple[str, str]], message: str) -> str:
        """A commit on `old` (None: a root commit) that adds `files` ((path, blob id)), the ref unmoved."""
        with tempfile.TemporaryDirectory(prefix="quantperf-history-") as tmp:
            env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
            if old is not None:
                self._git("read-tree", old, env=env)
            for path, blob in files:
                self._git("update-index", "--add", "--cacheinfo", f"100644,{blob},{path}", env=env)
            tree = self._git("write-tree", env=env).stdout.strip()
        parents = ["-p", old] if old else []
        return self._git("commit-tree", tree, *parents, "-m", message, env=IDENTITY).stdout.strip()

    def _swap(self, new: str, old: str | None) -> bool:
        """Move the branch from `old` to `new` only if it is still at `old` (git's compare-and-swap)."""
        return self._git("update-ref", "-m", "quantperf: add sittings", self.ref, new, old or ZERO,
                         check=False).returncode == 0

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
            commit = self._commit_onto(old, [(path, blob)], f"quantperf sitting {path}")
            if _before_swap is not None:
                _before_swap(self)
            if self._swap(commit, old):
                return commit
        raise BranchMovedError(f"{self.branch}: the branch moved under this writer {retries + 1} times (another "
                               "writer is adding sittings); this sitting was not added and nothing stored was lost: "
                               "run again")

    def _files(self, commit: str) -> dict[str, str]:
        """path -> blob id of every file in `commit`."""
        out = {}
        for line in self._git("ls-tree", "-r", commit).stdout.splitlines():
            meta, _, path = line.partition("\t")
            out[path] = meta.split()[2]
        return out

    def push(self, remote: str, retries: int = 3) -> str:
        """Push the branch to `remote` (a remote's name or URL), never forced. When the remote's
        branch moved (another runner pushed first), it is fetched, the sittings this branch holds
        and it lacks are committed on top of it, this branch moves there (compare-and-swap), and
        the push is tried again. Returns the pushed commit."""
        for _attempt in range(retries + 1):
            ours = self.tip()
            if ours is None:
                raise HistoryError(f"{self.branch}: no sitting to push (the branch does not exist in {self.repo})")
            pushed = self._git("push", "--quiet", remote, f"{self.ref}:{self.ref}", check=False)
            if pushed.returncode == 0:
                return ours
            tracking = f"refs/quantperf-remote/{self.branch}"
            fetched = self._git("fetch", "--quiet", remote, f"+{self.ref}:{tracking}", check=False)
            if fetched.returncode != 0:
                raise HistoryError(f"git push {remote} {self.branch} failed and its branch cannot be fetched: "
                                   f"{(pushed.stderr or fetched.stderr).strip()[:300]}")
            theirs = self._git("rev-parse", tracking).stdout.strip()
            if self._git("merge-base", "--is-ancestor", theirs, ours, check=False).returncode == 0:
                raise HistoryError(f"git push {remote} {self.branch} failed: {pushed.stderr.strip()[:300]}")
            mine, there = self._files(ours), self._files(theirs)
            clash = sorted(p for p in mine.keys() & there.keys() if mine[p] != there[p])
            if clash:
                raise HistoryError(f"{remote} {self.branch}: {clash[0]} holds another sitting than this branch's; the "
                                   "store is append-only: resolve it by hand, nothing was pushed")
            missing = sorted((p, b) for p, b in mine.items() if p not in there)
            rebased = self._commit_onto(theirs, missing, f"quantperf: {len(missing)} sitting(s) added on {remote}'s "
                                                         "branch") if missing else theirs
            if not self._swap(rebased, ours):
                continue  # a local writer added a sitting meanwhile: start again
        raise BranchMovedError(f"{remote} {self.branch}: the remote branch moved under this writer {retries + 1} "
                               "times; this branch keeps its sittings: push again")

    def _blobs(self, objects: list[str]) -> list[str]:
        """The contents of many blobs in one `git cat-file --batch` (one process, not one per sitting)."""
        if not objects:
            return []
        try:
            out = subprocess.run(["git", "-C", str(self.repo), "cat-file", "--batch"],
                                 input=("\n".join(objects) + "\n").encode(),
                                 capture_output=True, timeout=300, check=True).stdout
        except (OSError, subprocess.SubprocessError) as exc:
            raise HistoryError(f"git cat-file in {self.repo} failed: {exc}") from None
        texts, at = [], 0
        for _ in objects:
            end = out.index(b"\n", at)
            header = out[at:end].split()
            size = int(header[2])
            texts.append(out[end + 1:end + 1 + size].decode("utf-8", errors="replace"))
            at = end + 1 + size + 1
        return texts

    def profiles(self) -> list[str]:
        """The profiles with sittings on the branch."""
        tip = self.tip()
        if tip is None:
            return []
        return sorted(line.split("\t", 1)[1] for line in self._git("ls-tree", tip).stdout.splitlines()
                      if line.split()[1] == "tree")

    def read(self, profile: str, host: str | None = None, strict: bool = True) -> Loaded:
        """The sittings of a profile on the branch (all hosts, or one), oldest first."""
        tip = self.tip()
        if tip is None:
            return Loaded([])
        prefix = f"{profile}/{host}/" if host else f"{profile}/"
        names = [n for n in self._git("ls-tree", "-r", "--name-only", tip, "--", prefix).stdout.split("\n")
                 if n.endswith(".json")]
        out, skipped = [], []
        for name, text in zip(names, self._blobs([f"{tip}:{n}" for n in names])):
            where = f"{self.branch}:{name}"
            try:
                out.append(parse_sitting(text, where))
            except HistoryError as exc:
                if strict:
                    raise
                skipped.append(str(exc))
        return Loaded(sort_sittings(out), skipped)


def open_store(location: str | Path, branch: str | None = None):
    """The results store at `location`: a directory, or with `branch` that branch of the git
    repository at `location` (never its default branch). Both have append(sitting),
    read(profile, host=None, strict=True) and profiles()."""
    from .store import DirectoryStore

    return GitBranchStore(location, branch) if branch else DirectoryStore(location)
