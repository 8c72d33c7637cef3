"""The regression suite's session logic, independent of pytest: measure each configuration
once (interleaved with its takeaway partners), gate it against the profile's baseline,
evaluate claims, record baselines on request, and keep everything for the summary."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .baselines import BaselineStore, git_revision
from .engine import measure_many
from .gate import DEFAULT_ALPHA, DEFAULT_TOLERANCES, Verdict, compare_metric, resolve_tolerance
from .results import ResultLog, RunResult, atomic_write_text, dump_json
from .spec import RunSpec
from .takeaways import Claim, ClaimResult, evaluate, is_inconclusive


@dataclass
class ConfigOutcome:
    result: RunResult
    verdicts: list[Verdict] = field(default_factory=list)
    status: str = "ok"  # ok | regressed | improved | no-baseline | recorded | skipped | error
    message: str = ""
    version_changes: dict = field(default_factory=dict)


class NoBaseline(Exception):
    pass


class Skip(Exception):
    pass


class Fail(Exception):
    pass


class SuiteSession:
    def __init__(self, *, baselines_dir: Path, profiles: dict[str, str], record: bool = False, strict: bool = False,
                 tolerances: dict | None = None, profile_tolerances: dict | None = None, alpha: float = DEFAULT_ALPHA,
                 isolation: str = "process", results_path: Path | None = None, claims: list[Claim] | None = None,
                 max_rounds: int = 0, root: Path | None = None):
        self.baselines_dir = Path(baselines_dir)
        self.profiles = profiles  # device -> profile id
        self.record = record
        self.strict = strict
        self.tolerances = tolerances or {}
        self.profile_tolerances = profile_tolerances or {}
        self.alpha = alpha
        self.isolation = isolation
        self.log = ResultLog(results_path) if results_path else None
        self.claims = claims or []
        self.max_rounds = max_rounds
        self.root = root
        self.results: dict[str, RunResult] = {}
        self.outcomes: dict[str, ConfigOutcome] = {}
        self.claim_results: list[ClaimResult] = []
        self.recorded: list[str] = []
        self._stores: dict[str, BaselineStore] = {}
        self.quality_params: dict[str, dict] = {}  # device -> quality parameters (context, max_windows, corpus)
        self.quality_specs: list[RunSpec] = []  # quality configurations selected in this run
        self.noise_rows: list[dict] = []
        self.sensitivity: list[dict] = []  # noise experiments: {"evaluation": ..., "raw": ...}

    # -- baselines -----------------------------------------------------------------------
    def store(self, device: str) -> BaselineStore:
        profile = self.profiles[device]
        if profile not in self._stores:
            self._stores[profile] = BaselineStore(self.baselines_dir, profile)
        return self._stores[profile]

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

    def measure(self, spec: RunSpec, quality: bool = False) -> RunResult:
        key = ("quality:" if quality else "") + spec.id
        if key in self.results:
            return self.results[key]
        if quality:
            from .quality import measure_quality

            # one reference pass serves every quality configuration of this model and device
            batch = [spec] + [s for s in self.quality_specs if s.model == spec.model and s.device == spec.device
                              and s.id != spec.id and "quality:" + s.id not in self.results]
            batch = list({s.id: s for s in batch}.values())
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
        for res in measure_many(group, isolation=self.isolation, interleave=len(group) > 1,
                                profile=self.profiles[spec.device], more_rounds=adaptive, max_rounds=self.max_rounds):
            self._keep(res.spec.id, res)
        return self.results[key]


    def _keep(self, key: str, res: RunResult) -> None:
        self.results[key] = res
        if self.log:
            self.log.append(res)

    # -- gating --------------------------------------------------------------------------
    def tolerance(self, kind: str, device: str, override: dict | None = None, mode: str = "eager") -> float:
        prof = self.profile_tolerances.get(self.profiles.get(device, ""), {})
        return resolve_tolerance([DEFAULT_TOLERANCES, self.tolerances, prof, override or {}], kind, mode)

    def check(self, spec: RunSpec, kinds: tuple[str, ...], quality: bool = False, tolerances: dict | None = None) -> ConfigOutcome:
        """Measure (once) and gate `spec` on metric kinds. Raises Skip/Fail with a one-line reason."""
        res = self.measure(spec, quality=quality)
        key = f"{'quality:' if quality else ''}{spec.id}:{','.join(kinds)}"
        if res.status in ("unavailable", "mode-unsupported"):
            self.outcomes[key] = ConfigOutcome(res, status="skipped", message=res.reason or "")
            raise Skip(res.reason)
        if res.status != "ok":
            self.outcomes[key] = ConfigOutcome(res, status="error", message=res.reason or "")
            raise Fail(res.reason)
        store = self.store(spec.device)
        metrics = {n: m for n, m in res.metrics.items() if m.kind in kinds}
        cid = ("quality-" if quality else "") + spec.id
        if self.record:
            lines = self._record(store, RunResult(**{**res.__dict__, "metrics": metrics}), cid)
            outcome = ConfigOutcome(res, status="recorded", message="; ".join(lines) or "unchanged")
            self.outcomes[key] = outcome
            return outcome
        entry = store.entry(cid)
        if entry is None:
            others = store.other_profiles()
            note = (f" (baselines exist for other profiles: {', '.join(others)}; they are not used: "
                    "baselines never cross profiles)") if others else ""
            msg = (f"no baseline for {cid} on profile {store.profile} in {store.path}{note}; record one with "
                   f"`pytest benchmarks -m {'gpu' if spec.device == 'cuda' else 'cpu'} --qp-record`")
            self.outcomes[key] = ConfigOutcome(res, status="no-baseline", message=msg)
            if self.strict:
                raise Fail(msg)
            raise Skip(msg)
        store.check_identity(res, cid)
        verdicts = []
        for name, m in metrics.items():
            base = entry["metrics"].get(name)
            if base is None:
                continue
            verdicts.append(compare_metric(name, base["samples"], m.samples, m.higher_is_better,
                                           self.tolerance(m.kind, spec.device, tolerances, spec.mode), self.alpha,
                                           base.get("run_medians")))
        changes = store.version_changes(res, cid)
        status = "regressed" if any(v.failed for v in verdicts) else (
            "improved" if any(v.status == "improved" for v in verdicts) else "ok")
        outcome = ConfigOutcome(res, verdicts, status, version_changes=changes)
        if not res.validity.get("valid", True):
            outcome.message = f"measured while throttled (rounds {res.validity['throttled_rounds']})"
        self.outcomes[key] = outcome
        if status == "regressed":
            lines = [v.line() for v in verdicts if v.failed]
            vers = "" if not changes else " | library versions differ from the baseline: " + ", ".join(
                f"{k} {a} -> {b}" for k, (a, b) in changes.items())
            raise Fail(f"REGRESSED {cid} [{store.profile}]: " + "; ".join(lines) + vers)
        return outcome

    def _record(self, store: BaselineStore, res: RunResult, cid: str) -> list[str]:
        lines = store.update(res, git_revision(self.root), config_id=cid)
        store.save()  # atomic, after every config: an interrupted run keeps what it recorded
        self.recorded.extend(lines)
        return lines

    # -- repeatability -------------------------------------------------------------------
    def repeatability(self, spec: RunSpec, runs: int, target_cv: float | None, settings: dict | None = None):
        """The noise experiment (quantperf.sensitivity) on `spec` in `runs` fresh processes:
        within-run and between-run CV, minimum detectable change, A/A false alarms and the
        detection rate of injected slowdowns, at this session's speed tolerance for the mode.
        Fails when the within-run CV misses `target_cv`, when an A/A trial is flagged, or when
        the gate catches the mode's `detect` slowdown in fewer than `detect_rate` of the trials."""
        from .matrix import NOISE_DEFAULTS
        from .sensitivity import AA, CLEAN, evaluate, run_experiment, slow_name

        settings = {**NOISE_DEFAULTS, **(settings or {})}
        save = None
        if self.log:  # the raw experiment, kept after each process next to the results
            path = self.log.path.with_name(f"noise-{spec.id}.json")
            save = lambda data: atomic_write_text(path, dump_json(data))  # noqa: E731
        raw = run_experiment(spec, processes=runs, slowdowns=settings["slowdowns"], variants=settings["variants"],
                             isolation=self.isolation, checkpoint=save)
        if raw["status"] != "ok":
            if raw["status"] in ("unavailable", "mode-unsupported"):
                raise Skip(raw["reason"])
            raise Fail(raw["reason"])
        ev = evaluate(raw, self.tolerance("speed", spec.device, mode=spec.mode), self.alpha)
        self.sensitivity = [*self.sensitivity, {"evaluation": ev.to_dict(), "raw": raw}]
        clean = ev.side_noise(CLEAN)
        self.noise_rows = [*self.noise_rows, {
            "config": spec.id, "mode": spec.mode, "metric": "decode_tokens_per_s", "runs": ev.processes,
            "rounds": ev.rounds, "cv_within": clean.cv_within, "cv_between": clean.cv_between,
            "min_detectable": clean.min_detectable, "target": target_cv}]
        profile = self.profiles[spec.device]
        problems = []
        if target_cv is not None and clean.cv_within > target_cv:
            problems.append(f"NOISY {spec.id} [{profile}]: decode tok/s within-run CV {clean.cv_within * 100:.2f}% > target "
                            f"{target_cv * 100:.2f}% (between runs {(clean.cv_between or 0) * 100:.2f}%, "
                            f"min detectable {clean.min_detectable * 100:.1f}%)")
        for method in ("gate", "paired"):
            aa = ev.detection(AA, method)
            if aa and aa.flagged:
                problems.append(f"FALSE ALARM {spec.id} [{profile}]: the {method} check flagged {aa.flagged} of {aa.trials} "
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
        a_spec, b_spec = claim.specs(workload)
        profile = self.profiles[claim.device]
        if not claim.applies_to(profile):
            raise Skip(f"claim {claim.id} does not apply to profile {profile} (profiles: {', '.join(claim.profiles)})")
        quality = claim.metric in ("ppl", "mean_kld", "top1_agreement", "ln_ppl_ratio", "rms_dp")
        a = self.measure(a_spec, quality=quality)
        b = self.measure(b_spec, quality=quality)
        for side in (a, b):
            if side.status in ("unavailable", "mode-unsupported"):
                raise Skip(f"claim {claim.id}: {side.reason}")
        result = evaluate(claim, a, b, profile, confidence)
        self.claim_results.append(result)
        return result

    def write_summary(self, path: Path) -> None:
        data = {
            "profiles": self.profiles,
            "configs": {k: {"status": o.status, "message": o.message, "verdicts": [v.to_dict() for v in o.verdicts],
                            "version_changes": o.version_changes} for k, o in self.outcomes.items()},
            "claims": [{"id": c.claim.id, "profile": c.profile, "verdict": c.verdict, "expected": c.expected,
                        "ratio": c.ratio, "ci": [c.low, c.high], "p_value": c.p_value, "message": c.message()}
                       for c in self.claim_results],
            "repeatability": self.noise_rows,
            "sensitivity": self.sensitivity,
        }
        atomic_write_text(path, dump_json(data))
