"""pytest wiring for quantperf (registered through the `pytest11` entry point).

It only connects pytest to the library: options, markers, parametrization from the matrix,
the session fixture and the terminal summary. Heavy imports happen inside hooks, so
`pytest --help` works on a bare machine.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .shards import assign_shards, item_shard, shard_of

# `--qp-against SPEC` (an interleaved A/B instead of the baselines) is wired in its own module
pytest_plugins = ["quantperf.plugin_ab", "quantperf.plugin_history"]

# option names (module constants, as hypothesis does)
RECORD = "--qp-record"
STRICT = "--qp-strict"
PROFILE = "--qp-profile"
BASELINES = "--qp-baselines"
MATRIX = "--qp-matrix"
TAKEAWAYS = "--qp-takeaways"
MODELS = "--qp-models"
BACKENDS = "--qp-backends"
MODES = "--qp-modes"
TOLERANCE = "--qp-tolerance"
ALPHA = "--qp-alpha"
ISOLATION = "--qp-isolation"
RESULTS = "--qp-results"
MAX_ROUNDS = "--qp-max-rounds"
NOISE_RUNS = "--qp-noise-runs"
NOISE_VARIANTS = "--qp-noise-variants"
REPORT = "--qp-report"

MARKERS = {
    "gpu": "needs an NVIDIA GPU (the GPU tier); skipped with a reason elsewhere",
    "cpu": "the CPU tier",
    "quality": "output-quality metrics against a reference backend",
    "takeaway": "an executable deployment claim (interleaved A/B)",
    "slow": "large models or long runs",
}


def pytest_addhooks(pluginmanager):
    from . import hookspec

    pluginmanager.add_hookspecs(hookspec)


def pytest_addoption(parser):
    g = parser.getgroup("quantperf", "quantperf: LLM quantization performance regression suite")
    g.addoption(RECORD, action="store_true",
                help="record (write) baselines for the detected profile; nothing under baselines/ is written "
                     "without it")
    g.addoption(STRICT, action="store_true",
                help="fail (not skip) when a baseline is missing, and fail inconclusive takeaways")
    g.addoption(PROFILE,
                help="hardware profile id to use instead of the detected one (cuda=ID,cpu=ID or one ID for both)")
    g.addoption(BASELINES, help="baselines directory (ini: qp_baselines; default: baselines)")
    g.addoption(MATRIX, help="benchmark matrix TOML (ini: qp_matrix; default: benchmarks/matrix.toml)")
    g.addoption(TAKEAWAYS, help="takeaway claims TOML (ini: qp_takeaways; default: baselines/takeaways.toml)")
    g.addoption(MODELS,
                help="comma list of models replacing the matrix's (synthetic:llama-1b, hf:org/name, a directory)")
    g.addoption(BACKENDS, help="comma list of backends replacing the matrix's")
    g.addoption(MODES, help="comma list of modes replacing the matrix's (eager, graph)")
    g.addoption(TOLERANCE, help="tolerances per metric kind, e.g. 'speed:5%%,memory:1%%' (ini: qp_tolerance)")
    g.addoption(ALPHA, type=float, help="significance level of the regression gate (default 0.01)")
    g.addoption(ISOLATION, choices=["process", "inprocess"],
                help="measure each configuration in a fresh process (default) or in this one")
    g.addoption(RESULTS, help="JSON-lines file every measured configuration is appended to (ini: qp_results)")
    g.addoption(REPORT, metavar="DIR",
                help="after the session, write DIR/report.html (plots embedded) and DIR/report.md")
    g.addoption(MAX_ROUNDS, type=int,
                help="adaptive rounds: an inconclusive takeaway may add rounds up to this many per side")
    g.addoption(NOISE_RUNS, type=int, default=0,
                help="noise benchmark: run each tier's noise configurations in this many fresh processes "
                     "(within/between-run CV, A/A false alarms, injected-slowdown detection)")
    g.addoption(NOISE_VARIANTS, default=None,
                help="noise benchmark ablations, comma-separated (gc-on, unpinned, long; '' for none); "
                     "default: the tier's [noise] variants")
    for name, default, help_ in (
        ("qp_baselines", "baselines", "baselines directory"),
        ("qp_matrix", "benchmarks/matrix.toml", "benchmark matrix"),
        ("qp_takeaways", "baselines/takeaways.toml", "takeaway claims"),
        ("qp_tolerance", "", "tolerances per metric kind"),
        ("qp_isolation", "process", "process or inprocess"),
        ("qp_results", ".quantperf-results/results.jsonl", "results log"),
    ):
        parser.addini(name, help_, default=default)


def pytest_configure(config):
    for name, text in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}")
    _validate_options(config)
    _shard_configure(config)


# -- several GPUs: pytest-xdist, one worker per GPU -------------------------------------------
# `pytest benchmarks -m gpu -n 4` on a host with 4 GPUs: worker gwN measures on GPU N (pinned by
# UUID through CUDA_VISIBLE_DEVICES before anything touches CUDA, so NVML reads that GPU too);
# each measurement shard (a device, model, mode and batch: the configurations gated together and
# the claims between them) runs on one worker (a static split, balanced by an estimate of each
# shard's seconds, `spec_cost`: every worker collects every test and keeps its shards', under
# xdist's `--dist each`, set for you); each worker logs to
# results-gwN.jsonl and summary-gwN.json, and the controller merges them into results.jsonl and
# summary.json, prints one summary and writes the report.

def _worker_id(config) -> str | None:
    """This process's xdist worker id (`gw0`), None in the controller or without xdist."""
    return getattr(config, "workerinput", {}).get("workerid")


def _shard_count(config) -> int:
    """How many xdist workers this (controller) run has; 0 without xdist."""
    if _worker_id(config) or not config.pluginmanager.hasplugin("xdist"):
        return 0
    n = getattr(config.option, "numprocesses", None)
    return n if isinstance(n, int) and getattr(config.option, "dist", "no") != "no" else 0


def _shard_configure(config) -> None:
    import os

    worker = _worker_id(config)
    if worker:
        from .envinfo import gpu_uuids, worker_gpu

        gpu = worker_gpu(worker, os.environ.get("CUDA_VISIBLE_DEVICES"), gpu_uuids())
        if gpu is not None:
            os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    elif _shard_count(config) and config.option.dist in ("load", "loadgroup"):
        # every worker collects every test and keeps those of its own shards (a static split that
        # keeps a shard's tests, claims and gating on one GPU): xdist's `each` distribution
        config.option.dist = "each"
        config._qp_sharded = True


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node):
    """(xdist, controller) tell each worker to keep only its shards' tests."""
    if getattr(node.config, "_qp_sharded", False):
        node.workerinput["qp_sharded"] = True




def _worker_path(path: Path, worker: str | None) -> Path:
    return path.with_name(f"{path.stem}-{worker}{path.suffix}") if worker else path


def _validate_options(config) -> None:
    """Bad --qp-* values are one clean usage line naming the option and the value (pytest's
    "ERROR: ..."), before anything is collected or measured. Only options given on the command
    line are checked here (and QUANTPERF_PROGRESS, which only this project reads), so an unrelated
    project with this plugin installed is never touched."""
    from . import progress
    from .errors import ConfigError

    try:
        progress.log_requested()  # QUANTPERF_PROGRESS: 'log' or unset
        tol = config.getoption(TOLERANCE)
        if tol:
            from .gate import parse_tolerances

            try:
                parse_tolerances(tol)
            except ConfigError as exc:
                raise ConfigError(f"{TOLERANCE}: {exc}") from None
        if config.getoption(PROFILE) is not None:
            _parse_profile(config.getoption(PROFILE))
        alpha = config.getoption(ALPHA)
        if alpha is not None and not 0 < alpha < 1:
            raise ConfigError(f"{ALPHA} {alpha!r}: the significance level must lie strictly between 0 and 1")
        if any(config.getoption(o) for o in (MODELS, BACKENDS, MODES, MATRIX)):
            matrix = _path(config, _opt(config, MATRIX, "qp_matrix"))
            if not matrix.exists():
                raise ConfigError(f"{MATRIX}: {matrix} does not exist (the benchmark matrix TOML)")
            _tiers(config)
        if config.getoption(TAKEAWAYS):
            path = _path(config, config.getoption(TAKEAWAYS))
            if not path.exists():
                raise ConfigError(f"{TAKEAWAYS}: {path} does not exist (the takeaway claims TOML)")
            _claims(config)
    except ConfigError as exc:
        raise pytest.UsageError(f"quantperf: {exc}") from None


def _parse_profile(value: str) -> dict[str, str]:
    """--qp-profile: one profile id for both devices, or DEVICE=PROFILE[,DEVICE=PROFILE]; a
    malformed value is one ConfigError naming the option, the bad part and the accepted form."""
    import re

    from .errors import ConfigError

    form = "the accepted form is PROFILE (both devices) or DEVICE=PROFILE[,DEVICE=PROFILE], DEVICE cpu or cuda"
    parts = value.split(",") if "=" in value else [f"cpu={value}", f"cuda={value}"]
    given: dict[str, str] = {}
    for part in parts:
        device, sep, profile = (x.strip() for x in part.partition("="))
        bad = ("not DEVICE=PROFILE" if not sep else f"device {device!r} is not cpu or cuda"
               if device not in ("cpu", "cuda") else f"device {device} given twice" if device in given
               else "the profile id is empty" if not profile else None)
        if bad is None and not re.fullmatch(r"[a-z0-9][a-z0-9._-]*", profile):
            bad = f"profile id {profile!r} is not lower-case letters, digits, '.', '_', '-'"
        if bad:
            raise ConfigError(f"{PROFILE} {value!r}: {part.strip() if '=' in value else value!r}: {bad}; {form}")
        given[device] = profile
    return given


def _opt(config, option: str, ini: str | None = None):
    value = config.getoption(option)
    if value is None and ini:
        value = config.getini(ini)
    return value


def _path(config, value: str) -> Path:
    p = Path(value)
    return p if p.is_absolute() else Path(config.rootpath) / p


def _tiers(config):
    if not hasattr(config, "_qp_tiers"):
        from .matrix import load_matrix

        overrides = {k: _opt(config, o) for k, o in (("models", MODELS), ("backends", BACKENDS), ("modes", MODES))}
        config._qp_tiers = load_matrix(_path(config, _opt(config, MATRIX, "qp_matrix")), overrides,
                                       override_source="pytest options")
    return config._qp_tiers


def _claims(config):
    if not hasattr(config, "_qp_claims"):
        from .gate import load_claims

        path = _path(config, _opt(config, TAKEAWAYS, "qp_takeaways"))
        config._qp_claims = load_claims(path) if path.exists() else []
    return config._qp_claims


def _marks(device: str, model: str | None = None, tier=None, *extra) -> list:
    from .models import is_large

    marks = [pytest.mark.gpu if device == "cuda" else pytest.mark.cpu, *extra]
    if (tier is not None and tier.slow) or (model is not None and is_large(model)):
        marks.append(pytest.mark.slow)
    return marks


def pytest_generate_tests(metafunc):
    names = set(metafunc.fixturenames)
    if not names & {"qp_config", "qp_quality_config", "qp_claim", "qp_noise_config"}:
        return
    tiers = _tiers(metafunc.config)
    if "qp_config" in names:
        metafunc.parametrize("qp_config", [pytest.param(spec, id=spec.id, marks=_marks(t.device, spec.model, t))
                                           for t in tiers.values() for spec in t.configs])
    if "qp_quality_config" in names:
        metafunc.parametrize("qp_quality_config", [
            pytest.param(spec, id=f"{spec.model_label}-{spec.backend}-{spec.device}-quality",
                         marks=_marks(t.device, None, None, pytest.mark.quality))
            for t in tiers.values() for spec in t.quality_configs])
    if "qp_noise_config" in names:
        metafunc.parametrize("qp_noise_config",
                             [pytest.param((spec, t), id=spec.id, marks=_marks(t.device, None, None, pytest.mark.slow))
                                                 for t in tiers.values() for spec in t.noise_configs])
    if "qp_claim" in names:
        from .divergence import QUALITY_METRICS

        params = []
        for claim in _claims(metafunc.config):
            tier = next((t for t in tiers.values() if t.device == claim.device), None)
            if tier is None:
                continue
            extra = [pytest.mark.takeaway] + ([pytest.mark.quality] if claim.metric in QUALITY_METRICS else [])
            params.append(pytest.param((claim, tier.workload), id=f"{claim.id}-{claim.device}",
                                       marks=_marks(claim.device, claim.a.model, None, *extra)))
        metafunc.parametrize("qp_claim", params)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    """After -m/-k deselection: an xdist worker keeps its shards' tests; without CUDA the gpu tests
    that are still selected skip with one reason (torch is imported only when there is one)."""
    workerinput = getattr(config, "workerinput", None)
    if workerinput and workerinput.get("qp_sharded"):
        # an xdist worker: keep the tests of this worker's shards (see _shard_configure)
        shards = [item_shard(i) for i in items]
        keys = [k for k, _ in shards]
        owner = assign_shards(keys, workerinput["workercount"], [c for _, c in shards])
        me = int(workerinput["workerid"].removeprefix("gw"))
        keep = [i for i, k in zip(items, keys) if owner[k] == me]
        if len(keep) < len(items):
            config.hook.pytest_deselected(items=[i for i, k in zip(items, keys) if owner[k] != me])
            items[:] = keep
    gpu_items = [i for i in items if i.get_closest_marker("gpu")]
    if not gpu_items:
        return
    try:
        import torch

        cuda = torch.cuda.is_available()
    except ImportError:
        cuda = False
    if not cuda:
        skip = pytest.mark.skip(reason="no CUDA device here: the gpu tier needs an NVIDIA GPU and a CUDA build of "
                                   "torch")
        for item in gpu_items:
            item.add_marker(skip)


def _profiles(config) -> dict[str, str]:
    from .envinfo import profile_id
    from .errors import DeviceUnavailable

    override = config.getoption(PROFILE)
    given = _parse_profile(override) if override else {}
    profiles = {}
    for device in ("cpu", "cuda"):
        if device in given:
            profiles[device] = given[device]
            continue
        try:
            detected = profile_id(device)
        except DeviceUnavailable:
            continue
        hooked = config.hook.pytest_quantperf_profile(config=config, device=device, detected=detected)
        profiles[device] = hooked or detected
    return profiles


@pytest.fixture(scope="session")
def qp_session(request):
    """The quantperf session: measures each configuration once and gates it."""
    from .gate import DEFAULT_ALPHA, parse_tolerances
    from .suite import SuiteSession

    config = request.config
    tiers = _tiers(config)
    session = SuiteSession(
        baselines_dir=_path(config, _opt(config, BASELINES, "qp_baselines")),
        profiles=_profiles(config),
        record=config.getoption(RECORD),
        strict=config.getoption(STRICT),
        tolerances=parse_tolerances(_opt(config, TOLERANCE, "qp_tolerance") or ""),
        alpha=config.getoption(ALPHA) or DEFAULT_ALPHA,
        isolation=_opt(config, ISOLATION, "qp_isolation"),
        results_path=_worker_path(_path(config, _opt(config, RESULTS, "qp_results")), _worker_id(config)),
        claims=_claims(config),
        max_rounds=config.getoption(MAX_ROUNDS) or max((t.max_rounds for t in tiers.values()), default=0),
        root=Path(config.rootpath),
        record_hint=f"record one with `pytest benchmarks -m {{marker}} {RECORD}`",
    )
    session.quality_params = {t.device: t.quality_params for t in tiers.values() if t.quality_params}
    if _worker_id(config):
        session.shard_of = shard_of
    # the speed/memory configurations selected in this run: gated together (session shift)
    session.selected = list({item.callspec.params["qp_config"].id: item.callspec.params["qp_config"]
                             for item in request.session.items
                             if hasattr(item, "callspec") and "qp_config" in item.callspec.params}.values())
    # quality configurations selected in this run, measured in one batch per model and device
    session.quality_specs = [item.callspec.params["qp_quality_config"] for item in request.session.items
                             if hasattr(item, "callspec") and "qp_quality_config" in item.callspec.params]
    for item in request.session.items:
        if hasattr(item, "callspec") and "qp_claim" in item.callspec.params:
            claim, workload = item.callspec.params["qp_claim"]
            if claim.metric == "ppl":
                session.quality_specs.extend(claim.specs(workload))
    tr = config.pluginmanager.get_plugin("terminalreporter")
    capman = config.pluginmanager.get_plugin("capturemanager")
    if tr is not None and config.getoption("verbose") >= 0:
        import contextlib

        def progress(line: str) -> None:  # printed past pytest's output capture, as it happens
            with capman.global_and_fixture_disabled() if capman else contextlib.nullcontext():
                tr.ensure_newline()
                tr.write_line(f"  {line}")
        session.progress = progress
        from . import progress as steps

        log = steps.log_requested()
        if tr.isatty or log:  # a status line per long step past the capture (with QUANTPERF_PROGRESS=log a
            # timestamped line per step start and end, through `progress` above); nothing in CI logs
            steps.activate(steps.Steps(_Lines(progress) if log else _PastCapture(tr, capman), enabled=True, log=log))
            request.addfinalizer(lambda: steps.activate(None))
    config._qp_session = session
    return session


class _PastCapture:
    """A text stream for the progress line: pytest's terminal, written past its output capture."""

    def __init__(self, tr, capman):
        self.tr, self.capman = tr, capman

    def write(self, text: str) -> None:
        import contextlib

        with self.capman.global_and_fixture_disabled() if self.capman else contextlib.nullcontext():
            self.tr.write(text, flush=True)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return True


class _Lines:
    """A text stream that hands each whole line to `write_line` (the session's past-capture line
    writer, which indents it): the progress log of QUANTPERF_PROGRESS=log."""

    def __init__(self, write_line):
        self.write_line = write_line

    def write(self, text: str) -> None:
        for line in text.splitlines():
            if line.strip():
                self.write_line(line.strip())

    def flush(self) -> None:
        pass


def run_check(fn, *args, **kwargs):
    """Translate suite outcomes into pytest outcomes: one clean line each (the outcome is raised
    outside the except block, so pytest prints no chained traceback)."""
    import warnings

    from .errors import QuantperfError
    from .suite import Fail, Skip, Warn

    try:
        return fn(*args, **kwargs)
    except Skip as exc:
        outcome, message = pytest.skip, str(exc)
    except Warn as exc:
        outcome, message = None, str(exc)
    except (Fail, QuantperfError) as exc:
        outcome, message = pytest.fail, str(exc)
    if outcome is None:
        warnings.warn(message)
        return None
    if outcome is pytest.fail:
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def pytest_sessionfinish(session, exitstatus):
    """Write the summary (merge the xdist workers' files) and the report. A write that fails
    (read-only or full disk: StoreWriteError) is one line in the terminal summary and a failing
    exit status, never a traceback."""
    from .errors import StoreWriteError

    try:
        _finish(session)
    except StoreWriteError as exc:
        session.config._qp_write_error = str(exc)
        if session.exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED


def _finish(session) -> None:
    config = session.config
    qp = getattr(config, "_qp_session", None)
    if qp is not None and qp.log is not None:
        qp.summary().write(_worker_path(qp.log.path.with_name("summary.json"), _worker_id(config)))
    if _shard_count(config):
        _merge_shards(config)
    if not _worker_id(config) and (qp is not None or getattr(config, "_qp_merged", None) is not None):
        from .plugin_history import store_sitting

        summary, results = (qp.summary(), list(qp.results.values())) if qp is not None else config._qp_merged
        (qp.notes if qp is not None else summary.notes).extend(store_sitting(config, results, summary))
    report_dir = config.getoption(REPORT)
    if report_dir and not _worker_id(config) and (qp is not None or getattr(config, "_qp_merged", None) is not None):
        from .plugin_history import report_history
        from .report.html import ReportData, write

        if qp is not None:
            data = ReportData(results=[r for k, r in qp.results.items() if not k.startswith("confirm:")],
                              summaries=[qp.summary()], sources=[str(qp.log.path)] if qp.log else [])
        else:
            summary, results = config._qp_merged
            data = ReportData(results=[r for r in results if not r.timings.get("confirmation")], summaries=[summary],
                              sources=[summary.results_path] if summary.results_path else [])
        data.history, data.history_skipped = report_history(config)
        line = "report: " + ", ".join(write(data, Path(report_dir) / "report.html", Path(report_dir) / "report.md"))
        (qp.notes if qp is not None else config._qp_merged[0].notes).append(line)


def _merge_shards(config) -> None:
    """The controller of an xdist run: the workers' results and summaries become this session's
    results.jsonl and summary.json (the previous session's move aside, as without xdist)."""
    from .results import ResultLog
    from .summary import SessionSummary

    base = _path(config, _opt(config, RESULTS, "qp_results"))
    workers = [f"gw{i}" for i in range(_shard_count(config))]
    summaries = [_worker_path(base.with_name("summary.json"), w) for w in workers]
    logs = [_worker_path(base, w) for w in workers]
    parts = [SessionSummary.read(p) for p in summaries if p.exists()]
    if not parts:
        return
    log = ResultLog(base)
    log.rotate()
    results = []
    for path in logs:
        if path.exists():
            for res in ResultLog(path).read():
                log.append(res)
                results.append(res)
    merged = SessionSummary.merge(parts, results_path=str(base))
    merged.write(base.with_name("summary.json"))
    for path in summaries + logs:
        path.unlink(missing_ok=True)
    config._qp_merged = (merged, results)


def _skip_groups(terminalreporter) -> list[tuple[int, str]]:
    """Skipped quantperf tests grouped by reason: (count, reason), largest group first."""
    groups: dict[str, int] = {}
    for rep in terminalreporter.stats.get("skipped", []):
        if not any(k in rep.keywords for k in MARKERS):
            continue
        longrepr = rep.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
        reason = reason.removeprefix("Skipped: ")
        groups[reason] = groups.get(reason, 0) + 1
    return sorted(((n, r) for r, n in groups.items()), key=lambda x: -x[0])


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if getattr(config, "_qp_write_error", None):
        terminalreporter.write_line(f"quantperf: {config._qp_write_error}", red=True)
    session = getattr(config, "_qp_session", None)
    skips = _skip_groups(terminalreporter)
    if skips:  # one line per group, shown without -rs
        terminalreporter.section("quantperf: skipped")
        for n, reason in skips:
            terminalreporter.write_line(f"{n} test{'s' if n > 1 else ''}: {reason}")
    merged = getattr(config, "_qp_merged", None)
    if session is not None and (session.outcomes or session.claim_results or session.noise_rows):
        summary, title = session.summary(), "quantperf"
    elif session is None and merged is not None:  # the controller of an xdist run: the workers' merged summary
        summary, title = merged[0], f"quantperf ({_shard_count(config)} workers)"
    else:
        return
    from .report import render_terminal

    tr = terminalreporter
    tr.section(title)
    for line in render_terminal(summary).splitlines():
        tr.write_line(line)
    if summary.results_path:
        tr.write_line(f"results: {summary.results_path}  summary: "
                      f"{Path(summary.results_path).with_name('summary.json')}")
