"""pytest wiring of the results store (quantperf.history), loaded by quantperf.plugin:
`--qp-history STORE` keeps every sitting of the suite (its run medians and identities) in STORE,
a directory or, with `--qp-history-branch`, a branch of a git repository (never its default
branch); the profile's baseline is then derived from the store's last sittings of the branch of
record (`--qp-history-of-record`, default main) instead of being read from the baselines file
alone, and the HTML report gets the store's trend charts. Without the option nothing changes."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

HISTORY = "--qp-history"
BRANCH = "--qp-history-branch"
WINDOW = "--qp-history-window"
OF_RECORD = "--qp-history-of-record"
PUSH = "--qp-history-push"
ENV = "QUANTPERF_HISTORY"


def pytest_addoption(parser):
    g = parser.getgroup("quantperf")
    g.addoption(HISTORY, metavar="STORE",
                help=f"keep every sitting in the results store STORE (a directory; with {BRANCH}, a git repository) "
                     f"and derive the baselines from its last sittings (default: ${ENV}, else none)")
    g.addoption(BRANCH, metavar="NAME", help="keep the store on this branch of the git repository STORE (never the "
                                             "default branch)")
    g.addoption(WINDOW, type=int, default=20, help="sittings per host the baselines derive from (default 20)")
    g.addoption(OF_RECORD, default="main", metavar="BRANCH",
                help="the code branch whose sittings the baselines derive from (default main; others are kept, "
                     "shown in trends, never a baseline)")
    g.addoption(PUSH, metavar="REMOTE", help=f"with {BRANCH}: push the store's branch to REMOTE after the run "
                                             "(never forced)")


def location(config) -> str | None:
    return config.getoption(HISTORY) or os.environ.get(ENV) or None


def pytest_configure(config):
    """Settings that do not fit are one usage line (exit 4), before anything is measured."""
    from .errors import ConfigError

    where = location(config)
    try:
        if where is None:
            given = [o for o in (BRANCH, PUSH) if config.getoption(o)]
            if given:
                raise ConfigError(f"{', '.join(given)} only applies with {HISTORY} STORE")
        elif config.getoption(PUSH) and not config.getoption(BRANCH):
            raise ConfigError(f"{PUSH} needs {BRANCH}: a directory store is not pushed")
        if config.getoption(WINDOW) < 1:
            raise ConfigError(f"{WINDOW} must be at least 1, got {config.getoption(WINDOW)}")
    except ConfigError as exc:
        raise pytest.UsageError(str(exc)) from None


def open_history(config):
    from .history import open_store

    where = location(config)
    return None if where is None else open_store(where, config.getoption(BRANCH))


@pytest.hookimpl(wrapper=True)
def pytest_fixture_setup(fixturedef, request):
    """The session fixture (quantperf.plugin.qp_session) derives its baselines from the store."""
    result = yield
    config = request.config
    if fixturedef.argname == "qp_session" and getattr(config, "_qp_against", None) is None:
        store = open_history(config)
        if store is not None:
            result.history = store
            result.history_window = config.getoption(WINDOW)
            result.history_of_record = config.getoption(OF_RECORD)
    return result


def current_branch(root: Path) -> str | None:
    """The code branch this run measures: the CI's (a pull request's head, else the pushed ref),
    else git's checked-out branch; None when neither says (a detached checkout)."""
    for var in ("GITHUB_HEAD_REF", "GITHUB_REF_NAME", "CI_COMMIT_REF_NAME"):
        if os.environ.get(var):
            return os.environ[var]
    try:
        out = subprocess.run(["git", "rev-parse", "--abbrev-ref", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    name = out.stdout.strip()
    return name if out.returncode == 0 and name and name != "HEAD" else None


def store_sitting(config, results: list, summary) -> list[str]:
    """After a session (the controller's, once the workers' files are merged): its results become
    one sitting per profile in the store. Returns the lines the session prints; nothing is stored
    under --qp-against (an A/B has no sitting of its own) or when nothing was measured."""
    from .baselines import git_revision
    from .errors import QuantperfError, StoreWriteError
    from .history import from_results

    store = open_history(config)
    if store is None or getattr(config, "_qp_against", None) is not None:
        return []
    measured = [r for r in results if r.ok and not r.timings.get("confirmation")]
    if not measured:
        return [f"history: nothing measured, no sitting stored in {location(config)}"]
    root = Path(config.rootpath)
    lines = []
    try:
        for sitting in from_results(measured, summary.to_dict() if summary is not None else None,
                                    source_branch=current_branch(root), git_revision=git_revision(root)):
            where = store.append(sitting)
            lines.append(f"history: sitting {sitting.run_id} of {sitting.profile} (host {sitting.host}, "
                         f"{len(sitting.configs)} configuration(s)) stored: {where}")
        remote = config.getoption(PUSH)
        if remote:
            lines.append(f"history: pushed {config.getoption(BRANCH)} to {remote}: {store.push(remote)}")
    except QuantperfError as exc:  # one line and a failing exit status (the results file keeps the run)
        raise StoreWriteError(f"history: {exc}") from None
    return lines


def report_history(config) -> tuple[list, list[str]]:
    """The store's sittings of every profile (a corrupt one skipped and named) for the report's trends."""
    store = open_history(config)
    if store is None:
        return [], []
    sittings, skipped = [], []
    for profile in store.profiles():
        loaded = store.read(profile, strict=False)
        sittings += loaded.sittings
        skipped += loaded.skipped
    return sittings, skipped
