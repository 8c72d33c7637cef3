"""The regression suite's session logic, independent of pytest: measure each configuration
once (interleaved with its takeaway partners), gate it against the profile's baseline,
evaluate claims, record baselines on request, and keep everything for the summary."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .baselines import BaselineStore, git_revision
from .engine import measure_many
from .gate import DEFAULT_ALPHA, DEFAULT_TOLERANCES, Verdict, compare_metric
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
        self.tolerances = {**DEFAULT_TOLERANCES, **(tolerances or {})}
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
    def tolerance(self, kind: str, device: str, override: dict | None = None) -> float:
        prof = self.profile_tolerances.get(self.profiles.get(device, ""), {})
        return {**self.tolerances, **prof, **(override or {})}[kind]

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
                                           self.tolerance(m.kind, spec.device, tolerances), self.alpha,
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
    def repeatability(self, spec: RunSpec, runs: int, target_cv: float | None) -> list[dict]:
        """Measure `spec` in `runs` fresh processes; within-run CV, between-run CV and the minimum
        detectable change per speed metric. Fails when the within-run CV of decode tok/s misses
        the tier's target for the mode (the gate cannot be sharper than this noise)."""
        from .noise import noise_rows

        results = [measure_many([spec], isolation=self.isolation, profile=self.profiles[spec.device])[0]
                   for _ in range(runs)]
        for r in results:
            if self.log:
                self.log.append(r)
        bad = [r for r in results if not r.ok]
        if bad:
            if bad[0].status in ("unavailable", "mode-unsupported"):
                raise Skip(bad[0].reason)
            raise Fail(bad[0].reason)
        rows = noise_rows([[r] for r in results])
        for row in rows:
            row["target"] = target_cv if row["metric"] == "decode_tokens_per_s" else None
        self.noise_rows = [*self.noise_rows, *rows]
        decode = next(r for r in rows if r["metric"] == "decode_tokens_per_s")
        if target_cv is not None and decode["cv_within"] > target_cv:
            raise Fail(f"NOISY {spec.id} [{self.profiles[spec.device]}]: decode tok/s within-run CV "
                       f"{decode['cv_within'] * 100:.2f}% > target {target_cv * 100:.2f}% "
                       f"(between runs {decode['cv_between'] * 100:.2f}%, min detectable {decode['min_detectable'] * 100:.1f}%)")
        return rows

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
        }
        atomic_write_text(path, dump_json(data))
