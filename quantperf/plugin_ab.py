"""pytest wiring of `pytest benchmarks --qp-against SPEC` (loaded by quantperf.plugin): its options,
their validation, the order of an A/B session's tests, the AgainstSession attached to the session
fixture, the A/B report and the exit status. The A/B itself is quantperf.experiments.against.

Exit status: pytest's own (1 when a configuration regressed or a takeaway flipped), 4 for a SPEC
that does not parse, EXIT_SIDE_FAILED (6) when a configuration could not be compared because a
side failed and nothing regressed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

AGAINST = "--qp-against"
FIND_LINKS = "--qp-against-find-links"
NO_INDEX = "--qp-against-no-index"
ALLOW_CHANGES = "--qp-against-allow-changes"
PAIRS = "--qp-ab-pairs"
BLOCKS = "--qp-ab-blocks"
MAX_BLOCKS = "--qp-ab-max-blocks"
CALIBRATION = "--qp-ab-calibration"
PARAMS = {"qp_config", "qp_quality_config", "qp_claim"}


def pytest_addoption(parser):
    g = parser.getgroup("quantperf")
    g.addoption(AGAINST, metavar="SPEC",
                help="measure every selected configuration as an interleaved A/B, A = SPEC, B = this environment "
                     "(no baseline): NAME==VERSION pins separated by spaces, a requirements/constraints/lock file "
                     "(its pins that differ from this environment), or python:PATH (another interpreter)")
    g.addoption(FIND_LINKS, action="append", metavar="DIR", help="with --qp-against: look for A's packages in DIR")
    g.addoption(NO_INDEX, action="store_true", help="with --qp-against: only the --qp-against-find-links directories")
    g.addoption(ALLOW_CHANGES, action="store_true",
                help="with --qp-against: also install into A the dependencies A's versions need")
    g.addoption(PAIRS, type=int, default=3, help="A/B: fresh process pairs per configuration (>= 3; default 3)")
    g.addoption(BLOCKS, type=int, default=2, help="A/B: ABBA blocks per pair (default 2)")
    g.addoption(MAX_BLOCKS, type=int,
                help="A/B: blocks an inconclusive configuration may grow to, one extra pair at a time (default: none)")
    g.addoption(CALIBRATION, metavar="FILE",
                help="A/B: an A/A calibration of `quantperf upgrade-check --aa --calibration FILE` on this machine")


def _ab_options(config) -> dict:
    return {"pairs": config.getoption(PAIRS), "blocks": config.getoption(BLOCKS),
            "max_blocks": config.getoption(MAX_BLOCKS)}


def pytest_configure(config):
    """A SPEC that does not parse, and settings that do not fit, are one usage line (exit 4)."""
    from .errors import ConfigError
    from .experiments.against import parse_against
    from .gate import planned_looks

    spec = config.getoption(AGAINST)
    try:
        if spec is None:
            given = [o for o in (FIND_LINKS, NO_INDEX, ALLOW_CHANGES, CALIBRATION) if config.getoption(o)]
            if given:
                raise ConfigError(f"{', '.join(given)} only applies with {AGAINST} SPEC")
            return
        if config.getoption("--qp-record"):
            raise ConfigError(f"--qp-record with {AGAINST}: an A/B session reads and writes no baseline")
        if getattr(config.option, "numprocesses", None):
            raise ConfigError(f"{AGAINST} runs in one process (each configuration's pairs are already fresh "
                              "processes): drop -n")
        opts = _ab_options(config)
        planned_looks(opts["pairs"], opts["blocks"], opts["max_blocks"])
        links = config.getoption(FIND_LINKS) or []
        for link in links:
            if "://" not in link and not Path(link).is_dir():
                raise ConfigError(f"{FIND_LINKS} {link}: no such directory")
        if config.getoption(NO_INDEX) and not links:
            raise ConfigError(f"{NO_INDEX} needs {FIND_LINKS} DIR: there would be nowhere to install from")
        cal = config.getoption(CALIBRATION)
        if cal and not Path(cal).is_file():
            raise ConfigError(f"{CALIBRATION} {cal}: no such file (write one with `quantperf upgrade-check --aa "
                              f"--calibration {cal}`)")
        config._qp_against = parse_against(spec, find_links=links)
    except ConfigError as exc:
        raise pytest.UsageError(f"quantperf: {exc}") from None


def _rank(item) -> int:
    from .experiments.against import order_rank

    params = getattr(getattr(item, "callspec", None), "params", {})
    if not PARAMS & set(params):
        return order_rank("other", None)
    kind = getattr(item, "originalname", item.name).removeprefix("test_")
    spec = params.get("qp_config")
    return order_rank(kind, getattr(spec, "mode", None))


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """An A/B session measures the sharpest verdicts first: kernel, graph, eager speed, then memory
    (from the same process pairs), quality, takeaways; the order is stable otherwise."""
    if getattr(config, "_qp_against", None) is not None:
        items.sort(key=_rank)


def _planned(items) -> tuple[list, list, list]:
    """What the selected tests will compare: the speed and memory tests' configurations, the speed
    and memory takeaways ((claim, workload); AgainstSession keeps the configurations of those that
    apply to the profile) and the quality tests' configurations; a test marked to skip (a gpu test
    without a GPU) plans nothing. Kernel mode's configurations are measured together, on shared
    process pairs (quantperf.experiments.shared); each quality configuration's pair of processes
    starts while one before it is compared. An xdist worker collects every item and runs some of
    them: none is planned there."""
    from .divergence import QUALITY_METRICS

    if os.environ.get("PYTEST_XDIST_WORKER"):
        return [], [], []
    specs, claims, quality = [], [], []
    for item in items:
        if item.get_closest_marker("skip") is not None:
            continue
        params = getattr(getattr(item, "callspec", None), "params", {})
        kind = getattr(item, "originalname", item.name).removeprefix("test_")
        if "qp_config" in params and kind in ("speed", "memory"):
            specs.append(params["qp_config"])
        elif "qp_claim" in params and params["qp_claim"][0].metric not in QUALITY_METRICS:
            claims.append(params["qp_claim"])
        elif "qp_quality_config" in params:
            quality.append(params["qp_quality_config"])
    return list({s.id: s for s in specs}.values()), claims, list({s.id: s for s in quality}.values())


@pytest.hookimpl(wrapper=True)
def pytest_fixture_setup(fixturedef, request):
    """The session fixture (quantperf.plugin.qp_session) gets an AgainstSession under --qp-against."""
    result = yield
    config = request.config
    if fixturedef.argname == "qp_session" and getattr(config, "_qp_against", None) is not None \
            and getattr(result, "against", False) is None:
        _attach(config, result, *_planned(request.session.items))
    return result


def _attach(config, session, planned=(), planned_claims=(), planned_quality=()) -> None:
    from .errors import ConfigError
    from .experiments.against import AgainstSession
    from .experiments.upgrade import read_calibration

    def progress(line: str) -> None:
        if session.progress:
            session.progress(line)

    ab = AgainstSession(config._qp_against, profiles=session.profiles, tolerances=session.tolerances,
                        claims=session.claims, quality_params=session.quality_params,
                        find_links=config.getoption(FIND_LINKS) or (), no_index=config.getoption(NO_INDEX),
                        allow_changes=config.getoption(ALLOW_CHANGES), progress=progress,
                        planned=planned, planned_claims=planned_claims, planned_quality=planned_quality,
                        **_ab_options(config))
    cal = config.getoption(CALIBRATION)
    if cal:
        try:
            ab.calibration = read_calibration(cal, next(iter(session.profiles.values()), ""))
        except ConfigError as exc:
            ab.failure = str(exc)
    session.against = ab


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session, exitstatus):
    """The A/B report (ab.json beside the results; with --qp-report DIR: report.md, report.html and
    report.json there, replacing the suite's) and the exit status."""
    config = session.config
    qp = getattr(config, "_qp_session", None)
    ab = getattr(qp, "against", None)
    if ab is None:
        return
    from .report.upgrade import write_against
    from .results import atomic_write_text, dump_json

    try:
        rep, counts = ab.report(), ab.counts()
        code = ab.exit_status(int(session.exitstatus), session.testsfailed, qp.strict)
        data = rep.to_dict() | {"exit_code": code, "counts": counts}
        lines = []
        if qp.log is not None:
            atomic_write_text(qp.log.path.with_name("ab.json"), dump_json(data))
            lines.append(f"A/B JSON: {qp.log.path.with_name('ab.json')}")
        report_dir = config.getoption("--qp-report")
        if report_dir:
            lines.append("report: " + ", ".join(write_against(rep, report_dir, data, qp.strict)))
        config._qp_ab = (rep, counts, lines)
        session.exitstatus = code
    finally:
        ab.close()


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    got = getattr(config, "_qp_ab", None)
    if got is None:
        return
    from .report.upgrade import against_line, render_upgrade

    rep, counts, lines = got
    tr = terminalreporter
    tr.section("quantperf A/B")
    for line in render_upgrade(rep, strict=config.getoption("--qp-strict")).splitlines() + lines:
        tr.write_line(line)
    tr.write_line(against_line(rep, counts))
