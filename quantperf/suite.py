"""The regression suite's session logic, independent of pytest: measure each configuration
once (interleaved with its takeaway partners), gate it against the profile's baseline,
evaluate claims, record baselines on request, and keep everything in a typed summary.

Messages never name a command of one interface: `record_hint` (given by the plugin or the CLI)
says how to record a baseline in the interface in use."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .backends import entry as backend_entry
from .baselines import BaselineStore, git_revision
from .divergence import QUALITY_METRICS, limit_violations
from .errors import StoreWriteError
from .gate import (
    DEFAULT_ALPHA,
    DEFAULT_TOLERANCES,
    SKIPPED_UNLESS_STRICT,
    Claim,
    ClaimResult,
    Verdict,
    check_claim,
    check_runtime,
    gate_metrics,
    is_inconclusive,
    metrics_status,
    resolve_tolerance,
    run_failure,
    speed_status,
    timed_otherwise,
)
from .phases import clock, session_phases
from .results import ResultLog, RunResult, measured_line
from .spec import RunSpec
from .status import Status
from .summary import ClaimOutcome, ConfigOutcome, MetricVerdict, NoiseLine, SessionSummary


class Skip(Exception):
    """Skipped, with the reason (unavailable, no baseline outside --qp-strict)."""


class Fail(Exception):
    """Fails, with the message."""


class Warn(Exception):
    """Passes with a warning (an inconclusive verdict outside --qp-strict)."""


def _metric_verdict(v: Verdict) -> MetricVerdict:
    return MetricVerdict(metric=v.metric, status=v.status, current=v.current, baseline=v.baseline, ratio=v.ratio,
                         ci=None if v.ci is None else list(v.ci), tolerance=v.tolerance, p_value=v.p_value,
                         line=v.line(), notes=list(v.notes))


class SuiteSession:
    def __init__(self, *, baselines_dir: Path, profiles: dict[str, str], record: bool = False, strict: bool = False,
                 tolerances: dict | None = None, alpha: float = DEFAULT_ALPHA, isolation: str = "process",
                 results_path: Path | None = None, claims: list[Claim] | None = None, max_rounds: int = 0,
                 root: Path | None = None, record_hint: str = "record one with the suite's record option"):
        self.baselines_dir, self.profiles = Path(baselines_dir), profiles  # profiles: device -> profile id
        self.record, self.strict, self.tolerances, self.alpha = record, strict, tolerances or {}, alpha
        self.isolation, self.record_hint = isolation, record_hint
        self.log = ResultLog(results_path) if results_path else None
        if self.log is not None:
            self.log.rotate()  # one results file per session: older ones move beside it
        self.claims, self.max_rounds, self.root = claims or [], max_rounds, root
        # Sharded runs (pytest-xdist, one worker per GPU): a configuration's shard key; the speed gate then
        # measures and gates together that shard's configurations only (None: one process does all)
        self.shard_of: Callable[[RunSpec], str] | None = None
        self.results: dict[str, RunResult] = {}
        self.started = clock()  # the session's wall, for where its time went (quantperf.phases)
        self.outcomes: dict[str, ConfigOutcome] = {}
        self.claim_results: list[ClaimResult] = []
        self.unlogged: dict[str, str] = {}  # config id -> the results-file write error: measured, not logged
        self.recorded, self._stores = [], {}  # recorded config ids; profile -> BaselineStore
        self.quality_params: dict[str, dict] = {}  # device -> quality parameters (context, max_windows, corpus)
        self.quality_specs: list[RunSpec] = []  # quality configurations selected in this run
        self.noise_rows: list[dict] = []
        self.sensitivity: list[dict] = []  # noise experiments: {"evaluation": ..., "raw": ...}
        self.selected: list[RunSpec] = []  # the speed/memory configurations of this run (gated together)
        self.notes: list[str] = []  # session-wide lines: the session shift, the noise floor
        self._speed: dict[str, ConfigOutcome] = {}  # config id -> speed outcome, once the device is gated
        self._runtime_noted: set[str] = set()  # speed outcomes whose runtime notes are in their message
        self._recorded_runs: set[str] = set()  # config ids recorded in this session (one unit each)

    # -- baselines -----------------------------------------------------------------------
    def store(self, device: str) -> BaselineStore:
        profile = self.profiles[device]
        if profile not in self._stores:
            store = BaselineStore(self.baselines_dir, profile)
            if self.history is not None and not self.record:  # a store that cannot be read fails every check
                from .history import apply_derived

                self.notes += [n for n in [apply_derived(store, self.history, self.history_window,
                                                         self.history_of_record)] if n]
            self._stores[profile] = store
        return self._stores[profile]

    # the results store the baselines derive from (None: the file alone), sittings per host, branch of record
    history, history_window, history_of_record = None, 20, "main"

    progress = None  # called with one line per configuration as it is measured (the plugin prints it)
    # `pytest --qp-against SPEC`: an experiments.against.AgainstSession; check, check_quality and
    # check_claim then delegate to its interleaved A/B and no baseline is read
    against = None

    # -- measurement ---------------------------------------------------------------------
    def _partners(self, spec: RunSpec) -> list[RunSpec]:
        group = [spec]
        for claim in self.claims:
            if claim.device != spec.device or not claim.applies_to(self.profiles.get(spec.device, "")):
                continue
            a, b = claim.specs(spec.workload)
            for mine, other in ((a, b), (b, a)):
                if mine.id == spec.id and other.id not in self.results and all(g.id != other.id for g in group):
                    group.append(other)
        return group

    def measure(self, spec: RunSpec, quality: bool = False, then: RunSpec | None = None) -> RunResult:
        """Measure `spec` once per session (with its takeaway partners, interleaved). What comes next
        starts while this group loads (measure_many's `ahead`): `then`'s group, or the quality pass."""
        from .scheduler import measure_many, measure_quality, quality_first

        key = ("quality:" if quality else "") + spec.id
        if key in self.results:
            return self.results[key]
        if quality:
            # one reference pass serves every quality configuration of this model and device
            batch = list({s.id: s for s in [spec] + [s for s in self.quality_specs if (s.model, s.device) == (
                spec.model, spec.device) and "quality:" + s.id not in self.results]}.values())
            if self.progress:
                self.progress(f"measuring quality of {len(batch)} backend(s) on {spec.model_label} against the "
                              "reference")
            for res in measure_quality(batch, isolation=self.isolation, params=self.quality_params.get(spec.device, {}),
                                       profile=self.profiles[spec.device]):
                self._keep("quality:" + res.spec.id, res)
            return self.results[key]
        group = self._partners(spec)
        claims = [c for c in self.claims if c.metric == "decode_tokens_per_s"
                  and {x.id for x in c.specs(spec.workload)} <= {g.id for g in group}]

        def still_inconclusive(samples) -> bool:
            """Adaptive rounds: keep adding ABBA blocks while a decode-speed claim is undecided."""
            return any(is_inconclusive(c, samples[a.id], samples[b.id])
                       for c in claims for a, b in [c.specs(spec.workload)])

        adaptive = still_inconclusive if (len(group) > 1 and self.max_rounds and claims) else None
        if self.progress:
            self.progress(f"measuring {', '.join(g.id for g in group)}"
                          + (" (interleaved)" if len(group) > 1 else "") + ": load, one-time builds, warm-up, rounds")
        ahead = self._partners(then) if then is not None and then.id not in self.results else quality_first(
            [q for q in self.quality_specs if q.device == spec.device and "quality:" + q.id not in self.results
             and self.shard_of is None])  # sharded (xdist): which worker runs the quality pass is not known here
        for res in measure_many(group, isolation=self.isolation, interleave=len(group) > 1,
                                profile=self.profiles[spec.device], more_rounds=adaptive, max_rounds=self.max_rounds,
                                ahead=ahead):
            self._keep(res.spec.id, res)
        return self.results[key]

    def _next_group(self, todo: list[RunSpec], i: int) -> RunSpec | None:
        """The first configuration after todo[i] that todo[i]'s group will not have measured."""
        mine = {g.id for g in self._partners(todo[i])}
        return next((s for s in todo[i + 1:] if s.id not in mine and s.id not in self.results), None)

    def _todo(self, spec: RunSpec, baselined: bool = True) -> list[RunSpec]:
        """The selected configurations of `spec`'s device (and shard), in order, `spec` among them;
        `baselined`: those with a baseline. A speed test's measurement starts the next group ahead."""
        todo = [s for s in (self.selected or [spec]) if s.device == spec.device
                and (not baselined or self.has_baseline(s))
                and (self.shard_of is None or self.shard_of(s) == self.shard_of(spec))]
        return todo if spec in todo else todo + [spec]

    def _then(self, spec: RunSpec, baselined: bool = True) -> RunSpec | None:
        """The next group `spec`'s measurement starts ahead (`_todo`, `_next_group`)."""
        todo = self._todo(spec, baselined)
        return self._next_group(todo, todo.index(spec))

    def _keep(self, key: str, res: RunResult) -> None:
        if self.log:
            try:
                self.log.append(res)
            except StoreWriteError as exc:  # measured but not logged: the configuration fails with the line
                from dataclasses import replace

                res = replace(res, status=Status.ERROR, reason=str(exc))
                self.unlogged[res.spec.id] = str(exc)
        self.results[key] = res
        if self.progress:
            self.progress("measured " + measured_line(res, key))

    # -- gating --------------------------------------------------------------------------
    def tolerance(self, kind: str, override: dict | None = None, mode: str = "eager") -> float:
        return resolve_tolerance([DEFAULT_TOLERANCES, self.tolerances, override or {}], kind, mode)

    def gate_result(self, res: RunResult, kinds: tuple[str, ...], quality: bool = False,
                    tolerances: dict | None = None) -> ConfigOutcome:
        """Gate (or, when recording, record) one stored result on metric kinds. Pure with respect
        to measuring: the CLI gates results files with it."""
        spec = res.spec
        key = f"{'quality:' if quality else ''}{spec.id}:{','.join(kinds)}"
        cid = ("quality-" if quality else "") + spec.id
        decode = res.metrics.get("decode_tokens_per_s")
        outcome = ConfigOutcome(key, cid, list(kinds), Status.OK, decode_tokens_per_s=decode.value if decode else None,
                                runtime=res.runtime)
        self.outcomes[key] = outcome
        if failure := run_failure(res.status):
            outcome.status, outcome.message = failure, res.reason or ""
            return outcome
        store = self.store(spec.device)
        metrics = {n: m for n, m in res.metrics.items() if m.kind in kinds}
        if self.record:
            # a configuration's speed and memory are recorded as one unit, once per session
            if cid in self._recorded_runs:
                outcome.status, outcome.message = Status.RECORDED, "recorded with the configuration's other metrics"
                return outcome
            lines = store.update(res, git_revision(self.root), config_id=cid)
            try:
                store.save()  # atomic, after every config: an interrupted run keeps what it recorded
            except StoreWriteError as exc:  # not recorded: an error, never `recorded` or ok
                outcome.status, outcome.message = Status.ERROR, str(exc)
                return outcome
            self._recorded_runs.add(cid)
            self.recorded.extend(lines)
            outcome.status, outcome.message = Status.RECORDED, "; ".join(lines) or "unchanged"
            return outcome
        entry = store.entry(cid)
        if entry is None:
            return self._no_baseline(outcome, spec, store)
        store.check_identity(res, cid)
        runtime = check_runtime(store.runtime(cid), res.runtime)
        outcome.runtime_changes = runtime.changes
        if runtime.status is not None:  # other code ran: not the same configuration
            outcome.status, outcome.message = runtime.status, runtime.message(cid)
            return outcome
        if "speed" in kinds and (changed := store.method_change(res, cid)):
            outcome.status = timed_otherwise()
            outcome.message = f"{outcome.status.upper()} {cid}: {changed}"
            return outcome
        verdicts = gate_metrics(metrics, entry, lambda kind: self.tolerance(kind, tolerances, spec.mode), self.alpha)
        outcome.verdicts = [_metric_verdict(v) for v in verdicts]
        outcome.version_changes = {k: list(v) for k, v in store.version_changes(res, cid).items()}
        outcome.status = metrics_status(verdicts)
        if not res.validity.get("valid", True):
            outcome.message = f"measured while throttled (rounds {res.validity['throttled_rounds']})"
        if outcome.status == Status.REGRESSED:
            vers = "" if not outcome.version_changes else " | library versions differ from the baseline: " + ", ".join(
                f"{k} {a} -> {b}" for k, (a, b) in outcome.version_changes.items())
            failed = "; ".join(v.line() for v in verdicts if v.failed)
            outcome.message = f"REGRESSED {cid} [{store.profile}]: {failed}{vers}"
        outcome.message = " | ".join(m for m in (outcome.message, *runtime.notes) if m)
        return outcome

    def _no_baseline(self, outcome: ConfigOutcome, spec: RunSpec, store: BaselineStore) -> ConfigOutcome:
        note = (f" (baselines exist for other profiles: {', '.join(others)}; they are not used: baselines never "
                "cross profiles)") if (others := store.other_profiles()) else ""
        hint = self.record_hint.format(marker="gpu" if spec.device == "cuda" else "cpu")
        where = f"on profile {store.profile} in {store.path}{note}"
        outcome.status, outcome.message = Status.NO_BASELINE, f"no baseline for {outcome.config_id} {where}; {hint}"
        return outcome

    def has_baseline(self, spec: RunSpec, quality: bool = False) -> bool:
        """Whether the profile's baseline (read and validated now) holds this configuration."""
        return self.store(spec.device).entry(("quality-" if quality else "") + spec.id) is not None

    def gate_speed(self, results: list[RunResult], note_prefix: str = "") -> dict[str, ConfigOutcome]:
        """The run-level speed gate over one run's results of one device (quantperf.gate.gate_runs):
        per mode and gated metric, the noise pooled over the profile's configurations, the common
        session shift removed, a Bonferroni family of every configuration and metric gated here."""
        from .envinfo import measured_host, run_info
        from .gate.history import gate_runs_on_host
        from .results import METRICS
        from .scenarios import scenario_for

        by_mode: dict[str, list[RunResult]] = {}
        outcomes: dict[str, ConfigOutcome] = {}
        left_out: set[str] = set()  # runtime settings differ from the baseline's: out of the pooled gate
        for r in results:
            if not r.ok:
                continue
            runtime = check_runtime(self.store(r.spec.device).runtime(r.spec.id), r.runtime)
            if runtime.status is not None:
                head = r.metrics.get("decode_tokens_per_s")
                outcomes[r.spec.id] = ConfigOutcome(
                    f"{r.spec.id}:speed", r.spec.id, ["speed"], runtime.status, runtime.message(r.spec.id),
                    decode_tokens_per_s=head.value if head else None, runtime_changes=runtime.changes,
                    runtime=r.runtime)
                left_out.add(r.spec.id)
                continue
            by_mode.setdefault(r.spec.mode, []).append(r)
        for mode, group in sorted(by_mode.items()):
            store = self.store(group[0].spec.device)
            gated = scenario_for(mode).gated
            family = len(group) * len(gated)
            for metric in gated:
                hib = METRICS[metric][1]
                current = {r.spec.id: r.metrics[metric].value for r in group if metric in r.metrics}
                baselines = {cid: store.runs(cid, metric) for cid, e in store.data["configs"].items()
                             if (e.get("spec") or {}).get("mode", mode) == mode and store.runs(cid, metric)
                             and cid not in left_out}
                hosted = gate_runs_on_host(current, baselines, metric, hib, self.tolerance("speed", mode=mode),
                                           self.alpha, family, measured_host(group) or run_info()["host"], mode)
                verdicts, shift, model = hosted.verdicts, hosted.shift, hosted.model
                if hosted.scope.status is not None:  # no runs from this host: no verdict, what it would take
                    for r in group:
                        head = r.metrics.get("decode_tokens_per_s")
                        outcomes.setdefault(r.spec.id, ConfigOutcome(
                            f"{r.spec.id}:speed", r.spec.id, ["speed"], hosted.scope.status,
                            f"{r.spec.id}: {hosted.scope.message}", decode_tokens_per_s=head.value if head else None,
                            runtime=r.runtime))
                        left_out.add(r.spec.id)
                    continue
                if shift is not None:
                    noise = ("unknown (one run per configuration)" if model.sigma is None else
                             f"{model.sigma * 100:.1f}% (pooled over {model.n_configs} configurations, "
                             f"{model.n_sessions} session(s), {model.df:g} df)")
                    self.notes.append(f"{note_prefix}{store.profile} {mode} {metric}: {shift.line(hib)}; "
                                      f"run-to-run noise {noise}")
                for r in group:
                    key = f"{r.spec.id}:speed"
                    head = r.metrics.get("decode_tokens_per_s")
                    o = outcomes.setdefault(r.spec.id, ConfigOutcome(
                        key, r.spec.id, ["speed"], Status.OK, decode_tokens_per_s=head.value if head else None,
                        runtime=r.runtime))
                    v = verdicts.get(r.spec.id)
                    if v is None:
                        continue
                    o.verdicts.append(MetricVerdict(
                        metric=metric, status=v.status, current=current[r.spec.id], baseline=v.baseline,
                        ratio=v.ratio, ci=list(v.ci), tolerance=self.tolerance("speed", mode=mode),
                        noise_floor=v.noise_floor, line=v.line(), notes=list(v.notes)))
        by_id = {r.spec.id: r for r in results}
        for cid, o in outcomes.items():
            if cid in left_out:
                continue
            o.status = speed_status(v.status for v in o.verdicts)
            if changed := self.store(by_id[cid].spec.device).method_change(by_id[cid], cid):
                o.status = timed_otherwise()
                o.message = f"{o.status.upper()} {cid}: {changed}"
            elif o.status == Status.REGRESSED:
                o.message = f"REGRESSED {cid} [{self.store(results[0].spec.device).profile}]: " + "; ".join(
                    v.line for v in o.verdicts if v.status == Status.REGRESSED)
            elif o.status == Status.INCONCLUSIVE:
                o.message = f"INCONCLUSIVE {cid}: " + "; ".join(v.line for v in o.verdicts
                                                                if v.status == Status.INCONCLUSIVE)
        return outcomes

    def _speed_outcome(self, spec: RunSpec) -> ConfigOutcome:
        """Measure every selected configuration of the device (once), gate them together, and
        re-measure a flagged one in a fresh process: it is regressed only if flagged again."""
        if spec.id not in self._speed:
            todo = self._todo(spec)
            results = [self.measure(s, then=self._next_group(todo, i)) for i, s in enumerate(todo)]
            first = self.gate_speed(results)
            for cid, o in first.items():
                if o.status == Status.REGRESSED:
                    again = self._remeasure(self.results[cid].spec)
                    second = self.gate_speed([again if r.spec.id == cid else r for r in results],
                                             note_prefix=f"re-measure of {cid}: ")[cid]
                    if second.status != Status.REGRESSED:
                        second.message = (f"{cid}: flagged once, not confirmed by a fresh process "
                                          f"({second.status}); first: {o.message}")
                        for v in second.verdicts:
                            v.notes.append("flagged once, not confirmed")
                    first[cid] = second
            self._speed.update(first)
        outcome = self._speed[spec.id]
        self.outcomes[outcome.key] = outcome
        store = self.store(spec.device)
        changes = store.version_changes(self.results[spec.id], spec.id)
        outcome.version_changes = {k: list(v) for k, v in changes.items()}
        if outcome.status == Status.REGRESSED and changes:
            outcome.message += " | library versions differ from the baseline: " + ", ".join(
                f"{k} {a} -> {b}" for k, (a, b) in changes.items())
        if outcome.status != Status.INCOMPARABLE and spec.id not in self._runtime_noted:
            self._runtime_noted.add(spec.id)  # an outcome is read again by each of its tests: noted once
            runtime = check_runtime(store.runtime(spec.id), self.results[spec.id].runtime)
            outcome.runtime_changes = runtime.changes
            outcome.message = " | ".join(m for m in (outcome.message, *runtime.notes) if m)
        return outcome

    def _remeasure(self, spec: RunSpec) -> RunResult:
        from .scheduler import measure_many

        res = measure_many([spec], isolation=self.isolation, profile=self.profiles[spec.device])[0]
        res.timings["confirmation"] = True
        self._keep("confirm:" + spec.id, res)
        return res

    def raise_for(self, outcome: ConfigOutcome) -> ConfigOutcome:
        """An outcome as a test outcome: Skip, Fail, or return."""
        if outcome.status == Status.SKIPPED:
            raise Skip(outcome.message)
        if outcome.status in (Status.ERROR, Status.REGRESSED, Status.FLIPPED):
            raise Fail(outcome.message)
        if outcome.status in SKIPPED_UNLESS_STRICT:  # no baseline, or one of other runtime settings
            raise (Fail if self.strict else Skip)(outcome.message)
        if outcome.status == Status.INCONCLUSIVE:
            raise (Fail if self.strict else Warn)(outcome.message)
        return outcome

    def check(self, spec: RunSpec, kinds: tuple[str, ...], quality: bool = False,
              tolerances: dict | None = None) -> ConfigOutcome:
        """Measure (once) and gate `spec` on metric kinds. Raises Skip/Fail/Warn with a one-line reason.
        The baseline is read (and validated) before anything is measured: a corrupt file or a
        missing configuration costs no measuring time."""
        if self.against is not None:
            return self.raise_for(self.against.check(spec, ("quality",) if quality else kinds))
        store = self.store(spec.device)
        if not self.record and not self.has_baseline(spec, quality):
            key = f"{'quality:' if quality else ''}{spec.id}:{','.join(kinds)}"
            outcome = ConfigOutcome(key, ("quality-" if quality else "") + spec.id, list(kinds), Status.OK)
            self.outcomes[key] = outcome
            if self.history is not None:  # measured all the same: the store keeps it, the next sitting gates on it
                then = None if quality else self._then(spec, baselined=False)
                if failure := run_failure((res := self.measure(spec, quality=quality, then=then)).status):
                    outcome.status, outcome.message = failure, res.reason or ""
                    return self.raise_for(outcome)
            self._no_baseline(outcome, spec, store).message += ("; measured and kept in the results store: the next "
                                                                "sitting is gated against it") if self.history else ""
            return self.raise_for(outcome)
        if kinds == ("speed",) and not quality and not self.record and tolerances is None:
            res = self.measure(spec, then=self._then(spec))
            if not res.ok:
                return self.raise_for(self.gate_result(res, kinds))
            return self.raise_for(self._speed_outcome(spec))
        return self.raise_for(self.gate_result(self.measure(spec, quality=quality), kinds, quality, tolerances))

    def check_quality(self, spec: RunSpec) -> ConfigOutcome:
        """Quality figures within the backend class's limits, and not regressed against the baseline.
        The limits need no baseline: a profile without one gets them checked (Fail on a violation)
        and passes with a note, or fails under strict as the speed tests do."""
        if self.against is not None:
            return self.raise_for(self.against.quality(spec))
        baseline = self.has_baseline(spec, quality=True) or self.record  # read (and validated) before measuring
        res = self.measure(spec, quality=True)
        if res.ok:
            broken = limit_violations(backend_entry(spec.backend).quality_class, res.quality)
            if broken:
                raise Fail(f"QUALITY {spec.backend} on {spec.device}: " + "; ".join(broken)
                           + f" (reference {res.quality['reference_backend']})")
        if not baseline:
            return self._quality_without_baseline(spec, res)
        return self.check(spec, ("quality",), quality=True)

    def _quality_without_baseline(self, spec: RunSpec, res: RunResult) -> ConfigOutcome:
        key, cid = f"quality:{spec.id}:quality", f"quality-{spec.id}"
        outcome = ConfigOutcome(key, cid, ["quality"], Status.OK)
        self.outcomes[key] = outcome
        if failure := run_failure(res.status):
            outcome.status, outcome.message = failure, res.reason or ""
            return self.raise_for(outcome)
        self._no_baseline(outcome, spec, self.store(spec.device))
        if self.strict:
            raise Fail(outcome.message)
        limits = backend_entry(spec.backend).quality_class
        outcome.message = (f"{cid}: within the {limits} quality limits; no baseline: limits checked, regression "
                           f"against a baseline not ({outcome.message})")
        raise Warn(outcome.message)

    # -- repeatability -------------------------------------------------------------------
    def repeatability(self, spec: RunSpec, runs: int, target_cv: float | None, settings: dict | None = None):
        """The noise experiment (quantperf.experiments.sensitivity) on `spec` in `runs` fresh processes:
        within-run and between-run CV, minimum detectable change, A/A false alarms and the
        detection rate of injected slowdowns, at this session's speed tolerance for the mode.
        Fails when the within-run CV misses `target_cv`, when an A/A trial is flagged, or when
        the gate catches the mode's `detect` slowdown in fewer than `detect_rate` of the trials."""
        from .experiments.sensitivity import AA, run_experiment, slow_name
        from .experiments.sensitivity import evaluate as evaluate_noise
        from .matrix import NOISE_DEFAULTS
        from .results import atomic_write_text, dump_json

        settings = {**NOISE_DEFAULTS, **(settings or {})}
        save = None
        if self.log:  # the raw experiment, kept after each process next to the results
            path = self.log.path.with_name(f"noise-{spec.id}.json")
            save = lambda data: atomic_write_text(path, dump_json(data))  # noqa: E731
        raw = run_experiment(spec, processes=runs, slowdowns=settings["slowdowns"], variants=settings["variants"],
                             isolation=self.isolation, checkpoint=save)
        if raw["status"] != Status.OK:
            if raw["status"] in (Status.UNAVAILABLE, Status.MODE_UNSUPPORTED):
                raise Skip(raw["reason"])
            raise Fail(raw["reason"])
        ev = evaluate_noise(raw, self.tolerance("speed", mode=spec.mode), self.alpha)
        self.sensitivity.append({"evaluation": ev.to_dict(), "raw": raw})
        clean = ev.side_noise("clean")
        self.noise_rows.append({
            "config": spec.id, "mode": spec.mode, "metric": raw.get("metric"), "runs": ev.processes,
            "rounds": ev.rounds, "cv_within": clean.cv_within, "cv_between": clean.cv_between,
            "min_detectable": clean.min_detectable, "target": target_cv})
        profile = self.profiles[spec.device]
        problems = []
        if target_cv is not None and clean.cv_within > target_cv:
            problems.append(f"NOISY {spec.id} [{profile}]: {raw.get('metric')} within-run CV "
                            f"{clean.cv_within * 100:.2f}% > target "
                            f"{target_cv * 100:.2f}% (between runs {(clean.cv_between or 0) * 100:.2f}%, "
                            f"min detectable {clean.min_detectable * 100:.1f}%)")
        between_max = (settings.get("cv_between_max") or {}).get(spec.mode)
        if between_max is not None and clean.cv_between is not None and clean.cv_between > between_max:
            problems.append(f"NOISY {spec.id} [{profile}]: {raw.get('metric')} between-process CV "
                            f"{clean.cv_between * 100:.2f}% > target {between_max * 100:.2f}%")
        for method in ("gate", "paired"):
            aa = ev.detection(AA, method)
            if aa and aa.flagged:
                problems.append(f"FALSE ALARM {spec.id} [{profile}]: the {method} check flagged {aa.flagged} of "
                                f"{aa.trials} "
                                f"A/A trials (ratios {aa.ratios})")
        detect = settings["detect"].get(spec.mode)
        hit = ev.detection(slow_name(detect), "gate") if detect else None
        if hit and hit.rate < settings["detect_rate"]:
            problems.append(f"BLUNT {spec.id} [{profile}]: the gate caught an injected {detect * 100:g}% slowdown in "
                            f"{hit.flagged} of {hit.trials} trials, target {settings['detect_rate'] * 100:g}% "
                            f"(tolerance {ev.tolerance * 100:g}%, measured ratios {hit.ratios})")
        if problems:
            raise Fail("; ".join(problems))
        return ev

    # -- takeaways -----------------------------------------------------------------------
    def check_claim(self, claim: Claim, workload, confidence: float = 0.95) -> ClaimResult:
        """Measure both sides (interleaved) and evaluate the claim; Skip when it does not apply,
        Fail when the verdict differs from the expected one, Warn when inconclusive (Fail under
        strict)."""
        if self.against is not None:
            return self.raise_for(self.against.claim(claim, workload))
        a_spec, b_spec = claim.specs(workload)
        profile = self.profiles[claim.device]
        if not claim.applies_to(profile):
            raise Skip(f"claim {claim.id} does not apply to profile {profile} (profiles: {', '.join(claim.profiles)})")
        quality = claim.metric in QUALITY_METRICS
        store = self.store(claim.device)
        store.takeaway(claim.id)  # the baseline is read (and validated) before anything is measured
        a = self.measure(a_spec, quality=quality)
        b = self.measure(b_spec, quality=quality)
        for side in (a, b):
            if side.status in (Status.UNAVAILABLE, Status.MODE_UNSUPPORTED):
                raise Skip(f"claim {claim.id}: {side.reason}")
            if side.spec.id in self.unlogged:
                raise Fail(f"claim {claim.id}: {self.unlogged[side.spec.id]}")
        try:
            result, recorded = check_claim(claim, a, b, profile, store, confidence=confidence, record=self.record)
        except StoreWriteError as exc:
            raise Fail(str(exc)) from None
        self.claim_results.append(result)
        if recorded is not None:
            self.recorded.append(recorded)
            return result
        if result.verdict == Status.INCONCLUSIVE:
            raise (Fail if self.strict else Warn)(result.message())
        if not result.passed:
            raise Fail(result.message())
        if result.expected is None:
            hint = self.record_hint.format(marker="gpu" if claim.device == "cuda" else "cpu")
            message = f"{result.message()}; {hint}"
            raise (Fail if self.strict else Warn)(message)
        return result

    # -- the summary ---------------------------------------------------------------------
    def summary(self) -> SessionSummary:
        from .stats import min_detectable_change

        claims = [ClaimOutcome(id=c.claim.id, profile=c.profile, verdict=c.verdict, expected=c.expected, ratio=c.ratio,
                               ci=[c.low, c.high], p_value=c.p_value, message=c.message(), sentence=c.claim.sentence,
                               claimed=c.claim.describe_bounds(), a=c.claim.a.backend, b=c.claim.b.backend,
                               metric=c.claim.metric)
                  for c in self.claim_results]
        noise = []
        for key, r in self.results.items():
            if key.startswith("quality:") or not r.ok or "decode_tokens_per_s" not in r.metrics:
                continue
            s = r.metrics["decode_tokens_per_s"].summary
            noise.append(NoiseLine(r.spec.id, s.median, s.cv, s.n, min_detectable_change(s.cv, s.n),
                                   r.timings.get("adaptive_extra_rounds") or 0,
                                   ("confirmation run; " if key.startswith("confirm:") else "")
                                   + ("" if r.validity.get("valid", True) else "throttled")))
        from .scenarios.kernel import decomposition_lines

        measured = [r for k, r in self.results.items() if not k.startswith(("quality:", "confirm:"))]
        notes = self.notes + decomposition_lines(measured)
        return SessionSummary(profiles=dict(self.profiles), configs=list(self.outcomes.values()), claims=claims,
                              noise=noise, repeatability=list(self.noise_rows), sensitivity=list(self.sensitivity),
                              recorded=list(self.recorded), notes=list(dict.fromkeys(notes)),
                              results_path=str(self.log.path) if self.log else None,
                              phases=session_phases(self.results.values(), clock() - self.started))
