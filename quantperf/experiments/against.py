"""`pytest benchmarks --qp-against SPEC`: every selected configuration measured as an interleaved
A/B, environment A = SPEC, environment B = the running one, by the upgrade check's engine
(quantperf.experiments.upgrade: check_config, takeaway_checks; .quality_ab: quality_check; fresh process
pairs, ABBA blocks, A/A-calibrated tolerances per mode, the bounded sequential extension). No
stored baseline is read. The ratio is always B/A: B slower than A is a regression.

SPEC, parsed in one place (`parse_against`):

- an existing requirements/constraints/lock file (or pyproject.toml): A = the file's exact pins
  whose version differs from the one installed here (none: a usage error);
- `python:PATH` (or the path of an executable that is not a text file): A runs under that
  interpreter, in its own environment;
- otherwise NAME==VERSION pins separated by spaces (what the CI passes in one argument).

Pins become an overlay (quantperf.experiments.environments.build_overlay: the named packages in
a throw-away directory over this interpreter's environment), built once, before the first
measurement; a pin that no source has, or a package that does not import in A, is one line that
every A/B test fails with (`failure`), and the session's exit status is EXIT_SIDE_FAILED.

This module measures and keeps the figures; quantperf.gate decides, quantperf.report.upgrade renders.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError
from ..phases import check_phases, rounded
from ..phases import clock as phase_clock
from ..spec import RunSpec
from ..status import Status
from ..summary import ConfigOutcome
from .upgrade import (
    DEFAULT_ALPHA,
    DEFAULT_BLOCKS,
    DEFAULT_PAIRS,
    SIDE_NAMES,
    STATISTIC,
    ConfigCheck,
    Sides,
    UpgradeReport,
    ci_text,
    mode_tolerance,
)

# pytest's own exit codes are 0-5; a session in which a side could not be measured (and nothing
# regressed) ends with this one, so CI tells "could not compare" from "regressed" (1)
EXIT_SIDE_FAILED = 6
SPEC_FORMS = ("NAME==VERSION pins separated by spaces, a requirements/constraints/lock file, or python:PATH "
              "(another interpreter)")
# the order of an A/B session: the sharpest verdicts first
TEST_ORDER = {("speed", "kernel"): 0, ("speed", "graph"): 1, ("speed", "eager"): 2, ("memory", None): 3,
              ("quality", None): 4, ("takeaway", None): 5}
MIB = 1024 * 1024


@dataclass
class Against:
    """A parsed SPEC: `pins` for an overlay over this interpreter, or `python` (another interpreter)."""

    text: str
    form: str  # pins | file | python
    pins: list[str] = field(default_factory=list)
    python: str | None = None
    notes: list[str] = field(default_factory=list)


def _is_interpreter(path: Path) -> bool:
    """An executable that is not a text requirements file: a binary, or a script with a #! line."""
    if not path.is_file() or not os.access(path, os.X_OK):
        return False
    try:
        head = path.read_bytes()[:1024]
    except OSError:
        return False
    return b"\0" in head or head.startswith(b"#!")


def _interpreter(text: str, given: str) -> Against:
    import shutil

    found = shutil.which(given) or given
    path = Path(found)
    if not path.is_file() or not os.access(path, os.X_OK):
        raise ConfigError(f"--qp-against {text!r}: no executable interpreter at {given}")
    # absolute, not resolved: a virtualenv's python is a symlink that must stay one to be that venv
    return Against(text, "python", python=str(path.absolute()))


def _lock(text: str, path: Path, python: str) -> Against:
    from packaging.version import InvalidVersion, Version

    from .environments import child_versions, exact_pins

    try:
        content = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--qp-against {text}: cannot read it as a requirements file ({exc})") from None
    pins = {k: v for k, v in exact_pins(content, path.name).items() if k != "quantperf"}
    if not pins:
        raise ConfigError(f"--qp-against {text}: no exact NAME==VERSION pin in the file; SPEC is {SPEC_FORMS}")
    names = {k: pin.split("==", 1)[0] for k, pin in pins.items()}
    installed = child_versions({}, list(names.values()), python=python)

    def same(a: str, b: str) -> bool:
        try:
            return Version(a) == Version(b)
        except InvalidVersion:
            return a == b

    differ, absent = [], []
    for key, pin in sorted(pins.items()):
        have = installed.get(names[key])
        if have is None:
            absent.append(names[key])
        elif not same(have, pin.split("==", 1)[1]):
            differ.append(pin)
    if not differ:
        raise ConfigError(f"--qp-against {text}: SPEC names no package that differs from this environment "
                          f"({len(pins)} exact pins read, {len(pins) - len(absent)} installed here at those versions)")
    notes = [f"--qp-against {text}: not installed here, left out of A: {', '.join(absent)}"] if absent else []
    return Against(text, "file", pins=differ, notes=notes)


def parse_against(text: str, *, find_links=(), python: str = sys.executable) -> Against:
    """SPEC as A: a file, an interpreter or pins (see the module docstring). One ConfigError line
    when it does not parse; nothing is installed here."""
    from .environments import parse_requirements

    text = (text or "").strip()
    if not text:
        raise ConfigError(f"--qp-against: empty SPEC; give {SPEC_FORMS}")
    if text.startswith("python:"):
        return _interpreter(text, text.removeprefix("python:"))
    path = Path(text)
    if "==" not in text and path.exists():
        if path.is_dir():
            raise ConfigError(f"--qp-against {text}: a directory; give {SPEC_FORMS}")
        return _interpreter(text, text) if _is_interpreter(path) else _lock(text, path, python)
    try:
        reqs = parse_requirements(text.split(), find_links=find_links)
    except ConfigError as exc:
        raise ConfigError(f"--qp-against {text!r}: {exc}; SPEC is {SPEC_FORMS}") from None
    return Against(text, "pins", pins=[str(r) for r in reqs])


_ALL_VERSIONS = """
import importlib.metadata as md, json, os, re, sys
out = {}
for d in md.distributions():
    name = d.metadata["Name"]
    if name:
        out.setdefault(re.sub(r"[-_.]+", "-", name).lower(), [name, d.version])
os.write(1, json.dumps(out).encode())
"""


def _all_versions(python: str) -> dict[str, list[str]]:
    """Every distribution an interpreter sees: {canonical name: [name, version]}."""
    try:
        proc = subprocess.run([python, "-c", _ALL_VERSIONS], capture_output=True, text=True, timeout=300)
        return json.loads(proc.stdout)
    except (OSError, subprocess.TimeoutExpired, ValueError):
        raise ConfigError(f"environment A: the interpreter {python} does not run (cannot list its packages)") from None


def order_rank(kind: str, mode: str | None) -> int:
    """Where a test goes in an A/B session: kernel, graph and eager speed, memory, quality,
    takeaways (anything else last)."""
    return TEST_ORDER.get((kind, mode if kind == "speed" else None), len(TEST_ORDER))


class AgainstSession:
    """One pytest session's A/B: side A built once, each configuration compared once (speed and
    memory from the same process pairs), quality and claims on demand; `report()` for the end."""

    def __init__(self, against: Against, *, profiles: dict[str, str], tolerances: dict | None = None,
                 pairs: int = DEFAULT_PAIRS, blocks: int = DEFAULT_BLOCKS, max_blocks: int | None = None,
                 alpha: float = DEFAULT_ALPHA, calibration: dict | None = None, claims=(),
                 quality_params: dict | None = None, find_links=(), no_index: bool = False,
                 allow_changes: bool = False, model_options: dict | None = None,
                 progress: Callable[[str], None] | None = None, planned=(), planned_claims=(),
                 planned_quality=()):
        from ..gate import DEFAULT_TOLERANCES

        self.against, self.profiles = against, profiles
        self.layers = [DEFAULT_TOLERANCES, dict(tolerances or {})]
        self.pairs, self.blocks, self.max_blocks, self.alpha = pairs, blocks, max_blocks, alpha
        self.calibration, self.claims = calibration, list(claims)
        self.quality_params = quality_params or {}
        self.find_links, self.no_index, self.allow_changes = list(find_links), no_index, allow_changes
        self.model_options = model_options or {}
        self.progress = progress
        self.planned = list(planned)  # the session's configurations: kernel mode's share their process pairs
        self.planned_claims = list(planned_claims)  # (claim, workload): their configurations are planned too
        self.planned_quality = list(planned_quality)  # its quality configurations: the next ones start ahead
        self._quality_ahead = None
        self._next: tuple[str, int, object] | None = None  # (configuration id, sides_key, its ahead.Ahead)
        self.failure: str | None = None  # side A could not be built: every A/B test fails with it
        self.sides: Sides | None = None
        self.overlay = None
        self.describe_a, self.describe_b, self.differ = against.text, "this environment", against.text
        self.notes: list[str] = list(against.notes)
        self.checks: dict[str, tuple[ConfigCheck, dict]] = {}
        self.memory: dict[str, list[dict]] = {}
        self.quality_rows: dict[str, dict] = {}
        self.takeaways: dict[str, dict] = {}
        self.outcomes: dict[str, tuple[str, ConfigOutcome]] = {}  # key -> (kind, outcome)
        self._results: dict[str, dict] = {}
        self._environment = None
        self._started = phase_clock()  # the A/B's wall (building side A included), for where its time went

    def say(self, line: str) -> None:
        if self.progress:
            self.progress(line)

    # -- side A --------------------------------------------------------------------------------
    def start(self) -> bool:
        """Build side A once (an overlay, or another interpreter's description); False (and
        `failure` set) when it cannot be."""
        if self.sides is not None or self.failure is not None:
            return self.failure is None
        from ..envinfo import environment
        from .environments import build_overlay

        try:
            self._environment = environment()
            if self.against.python:
                self._interpreter_sides()
            else:
                self.say(f"building environment A: {' '.join(self.against.pins)}")
                self.overlay = build_overlay(self.against.pins, find_links=self.find_links, no_index=self.no_index,
                                             allow_changes=self.allow_changes)
                self._overlay_sides()
        except ConfigError as exc:
            # build_overlay names its overlay "environment B" (upgrade-check's side); here it is A
            self.failure = "environment A (--qp-against): " + str(exc).replace("environment B: ", "").replace(
                "environment B", "environment A")
            self.say(self.failure)
            return False
        self.say(f"A/B: A = {self.describe_a} | B = {self.describe_b}")
        return True

    def _overlay_sides(self) -> None:
        ov = self.overlay
        a_ver, b_ver = ov.versions_b, ov.versions_a  # the overlay's B is our A
        names = ov.names
        self.describe_a = ", ".join(f"{n} {a_ver.get(n) or '(not installed)'}" for n in names)
        self.describe_b = ", ".join(f"{n} {b_ver.get(n) or '(not installed)'}" for n in names) + " (this environment)"
        self.differ = ", ".join(f"{n} A {a_ver.get(n) or '-'} | B {b_ver.get(n) or '-'}" for n in names)
        self.notes += [w.replace(" is already the base's version", " is already this environment's version")
                       for w in ov.warnings]
        self.sides = Sides(python_a=ov.python, env_a=ov.env(), label_a=self.describe_a, label_b=self.describe_b)

    def _interpreter_sides(self) -> None:
        python = self.against.python
        a, b = _all_versions(python), _all_versions(sys.executable)
        differ = [f"{(a.get(k) or b.get(k))[0]} A {(a.get(k) or [0, '-'])[1]} | B {(b.get(k) or [0, '-'])[1]}"
                  for k in sorted(set(a) | set(b)) if k != "quantperf" and a.get(k) != b.get(k)]
        self.describe_a = f"python {python}"
        self.differ = "; ".join(differ[:20]) + (f"; ... {len(differ) - 20} more" if len(differ) > 20 else "") \
            if differ else "no package differs"
        self.sides = Sides(python_a=python, label_a=self.describe_a, label_b=f"python {sys.executable}")

    # -- speed and memory ----------------------------------------------------------------------
    def _measure(self, spec: RunSpec) -> ConfigCheck | None:
        """Each configuration checked once (both sides, fresh process pairs); a configuration of a
        shared mode is checked with every planned one of its device and mode not checked yet, on
        shared pairs (quantperf.experiments.shared). None when side A could not be built."""
        from .shared import check_all, shared_modes

        if not self.start():
            return None
        if spec.id not in self.checks:
            if self._quality_ahead is not None:  # pairs started for quality tests not reached (a -x stop, a
                self._quality_ahead.close()  # failure): nothing starts beside a timed A/B
            claimed = [s for claim, workload in self.planned_claims
                       if claim.applies_to(self.profiles.get(claim.device, "")) for s in claim.specs(workload)]
            same = list({s.id: s for s in self.planned + claimed if s.id != spec.id and s.id not in self.checks
                         and (s.device, s.mode) == (spec.device, spec.mode)}.values())
            batch = [spec] + (same if spec.mode in shared_modes() else [])
            self.say(f"A/B {', '.join(s.id for s in batch)}: {self.pairs} process pairs x {self.blocks} ABBA blocks")
            tolerance_of = lambda s: mode_tolerance(self.layers, s.mode, self.calibration)  # noqa: E731
            chained = self._chain(spec, batch)
            try:
                got = check_all(batch, self.sides, tolerance_of=tolerance_of,
                                pairs=self.pairs, blocks=self.blocks, max_blocks=self.max_blocks, alpha=self.alpha,
                                environment=self._environment, profile=self.profiles.get(spec.device),
                                model_options=self.model_options, progress=self.say, **chained)
            except BaseException:
                if chained.get("ahead") is not None:  # check_config closes it, unless it failed before owning it
                    chained["ahead"].close()
                raise
            self.checks.update({s.id: g for s, g in zip(batch, got)})
        return self.checks[spec.id][0]

    def _chain(self, spec: RunSpec, batch: list[RunSpec]) -> dict:
        """check_config's `ahead` and `then` for a configuration checked on pairs of its own (a shared
        `batch`'s check_shared: `then`): the pair the check before started for it (unless the sides'
        environment changed since), and an Ahead for the planned configuration whose check comes next
        (skipping those checked already or known unavailable, whose checks start nothing) where that
        one is checked on pairs of its own on the same device; its first pair starts with this
        check's last. Off where pairs are not started ahead."""
        from ..starting import known_unavailable
        from .ahead import Ahead, overlap_default
        from .quality_ab import sides_key
        from .shared import shared_modes

        def unavailable(s: RunSpec) -> bool:
            return any(known_unavailable(s, **self.sides.kwargs(n)) for n in SIDE_NAMES)

        # its check (of its own pairs) starts no process and times nothing: a pair started for a later one waits
        if spec.mode not in shared_modes() and unavailable(spec):
            if self._next is not None and self._next[0] == spec.id:
                self._next[2].close()
                self._next = None
            return {}
        got, self._next = self._next, None
        ahead = None
        if got is not None:
            if got[:2] == (spec.id, sides_key(self.sides)):
                ahead = got[2]
            else:
                got[2].close()
        if not overlap_default(spec.device):
            if ahead is not None:
                ahead.close()
            return {}
        after = self.planned[next((i + 1 for i, s in enumerate(self.planned) if s.id == spec.id), len(self.planned)):]
        done = set(self.checks) | {s.id for s in batch}
        nxt = next((s for s in after if s.id not in done and not unavailable(s)), None)
        if nxt is not None and nxt.mode not in shared_modes() and nxt.device == spec.device:
            self._next = (nxt.id, sides_key(self.sides), Ahead(nxt, self.sides, self.model_options))
        then = self._next[2] if self._next is not None else None
        return {"then": then} if spec.mode in shared_modes() else {"ahead": ahead, "then": then}

    def _keep(self, key: str, kind: str, outcome: ConfigOutcome) -> ConfigOutcome:
        self.outcomes[key] = (kind, outcome)
        return outcome

    def _not_compared(self, key: str, kind: str, cid: str, check: ConfigCheck | None) -> ConfigOutcome | None:
        if check is None:
            return self._keep(key, kind, ConfigOutcome(key, cid, [kind], Status.ERROR, self.failure or ""))
        if check.status != Status.OK:
            return self._keep(key, kind, ConfigOutcome(key, cid, [kind], check.status, check.message))
        return None

    def speed(self, spec: RunSpec) -> ConfigOutcome:
        key = f"{spec.id}:speed"
        check = self._measure(spec)
        if (out := self._not_compared(key, "speed", spec.id, check)) is not None:
            return out
        tol = f"{check.tolerance * 100:.1f}%" + (" (A/A calibrated)" if check.tolerance_source == "calibration" else "")
        figure = (f"per-token time B/A x{ci_text(check.ratio, check.low, check.high)} "
                  f"({check.confidence * 100:.1f}% interval over {len(check.complete_pair_means)} process pairs), "
                  f"tolerance {tol}")
        word = check.verdict.upper() if check.verdict != Status.OK else "same"
        message = f"{word} {spec.id}: {figure} | A: {self.describe_a} | B: {self.describe_b}"
        return self._keep(key, "speed", ConfigOutcome(key, spec.id, ["speed"], check.verdict, message))

    def memory_outcome(self, spec: RunSpec) -> ConfigOutcome:
        """The memory figures of A and B from the speed check's process pairs, B/A per figure."""
        from ..gate import memory_verdict, resolve_tolerance, speed_status
        from ..results import METRICS

        key = f"{spec.id}:memory"
        check = self._measure(spec)
        if (out := self._not_compared(key, "memory", spec.id, check)) is not None:
            return out
        keep = self.checks[spec.id][1]
        tol = resolve_tolerance(self.layers, "memory", spec.mode)
        rows = []
        for metric in (m for m, (_, _, kind) in METRICS.items() if kind == "memory"):
            def values(side):
                out = []
                for mem in keep.get(f"memories_{side}", []):
                    v = mem.get("weight_bytes") if metric == "weight_mib" else mem.get(metric)
                    out.append(None if v is None else (v / MIB if metric == "weight_mib" else float(v)))
                return out

            a, b = values("A"), values("B")
            if not any(v is not None for v in a + b):
                continue
            verdict, ratio, low, high = memory_verdict(a, b, tol, check.confidence or 1 - self.alpha)
            rows.append({"config_id": spec.id, "metric": metric, "a": a, "b": b, "ratio": ratio, "low": low,
                         "high": high, "tolerance": tol, "verdict": verdict})
        self.memory[spec.id] = rows
        status = speed_status(r["verdict"] for r in rows)
        worst = [r for r in rows if r["verdict"] == status] or rows
        lines = [f"{r['metric']} B/A x{ci_text(r['ratio'], r['low'], r['high'])} ({r['verdict']})" for r in worst]
        word = status.upper() if status != Status.OK else "same"
        message = f"{word} {spec.id} memory: " + ("; ".join(lines) or "no memory figure") + \
            f", tolerance {tol * 100:.1f}% | A: {self.describe_a} | B: {self.describe_b}"
        return self._keep(key, "memory", ConfigOutcome(key, spec.id, ["memory"], status, message))

    def check(self, spec: RunSpec, kinds: tuple[str, ...]) -> ConfigOutcome:
        """SuiteSession.check's A/B: speed and/or memory (the first outcome that is not ok)."""
        outs = ([self.speed(spec)] if "speed" in kinds else []) + \
               ([self.memory_outcome(spec)] if "memory" in kinds else [])
        if "quality" in kinds:
            outs.append(self.quality(spec))
        return next((o for o in outs if o.status != Status.OK), outs[-1]) if outs else \
            ConfigOutcome(spec.id, spec.id, list(kinds), Status.SKIPPED, f"--qp-against compares no {kinds}")

    # -- quality and claims ----------------------------------------------------------------------
    def quality(self, spec: RunSpec) -> ConfigOutcome:
        """B's outputs against A's reference (quality_check): beyond the class limits fails."""
        from ..gate import ab_test_status
        from .quality_ab import QUALITY_AB_AHEAD, QualityAhead, quality_check

        cid, key = "quality-" + spec.id, f"quality:{spec.id}"
        if not self.start():
            return self._keep(key, "quality", ConfigOutcome(key, cid, ["quality"], Status.ERROR, self.failure))
        if cid not in self.quality_rows:
            self.say(f"A/B quality {spec.id}: A writes the reference, B compares")
            t0 = phase_clock()
            if self._quality_ahead is None:
                self._quality_ahead = QualityAhead(self.sides, self.model_options)
            # the next planned quality configurations of this device start while this one is compared
            started = self._quality_ahead.turn(spec, [s for s in self.planned_quality if s.id != spec.id
                                                      and s.device == spec.device and "quality-" + s.id
                                                      not in self.quality_rows][:QUALITY_AB_AHEAD])
            q = quality_check(spec, self.sides, self.quality_params.get(spec.device, {}),
                              environment=self._environment, profile=self.profiles.get(spec.device),
                              model_options=self.model_options, started=started)
            self.quality_rows[cid] = q | {"phases": rounded({"quality": phase_clock() - t0})}
        q = self.quality_rows[cid]
        if q["status"] != Status.OK:
            return self._keep(key, "quality", ConfigOutcome(key, cid, ["quality"], q["status"], q.get("message", "")))
        s = q["stats"]
        figures = f"mean KLD {s['mean_kld']:.3g}, top-1 agreement {s['top1_agreement']:.4f}"
        why = "; ".join(q["violations"])
        message = f"QUALITY {cid} ({q['verdict']}): B against A: {figures}" + (f": {why}" if why else "") + \
            f" | A: {self.describe_a} | B: {self.describe_b}"
        return self._keep(key, "quality", ConfigOutcome(key, cid, ["quality"], ab_test_status(q["verdict"]),
                                                        message))

    def _result(self, spec: RunSpec, side: str):
        from ..scheduler import build_result

        if spec.id not in self._results:
            keep = self.checks[spec.id][1]
            profile = self.profiles.get(spec.device)
            self._results[spec.id] = {n: build_result(keep[f"side_{n}"], keep[f"rounds_{n}"], keep[f"memory_{n}"],
                                                      profile, keep.get(f"runtime_{n}")) for n in ("A", "B")}
        return self._results[spec.id][side]

    def claim(self, claim, workload) -> ConfigOutcome:
        """The claim evaluated in A and in B on the configurations' A/B rounds; a verdict that
        differs (both conclusive) is FLIPPED, naming both ratios and the packages that differ."""
        from ..divergence import QUALITY_METRICS
        from .upgrade import takeaway_checks

        key, cid = f"takeaway:{claim.id}", f"takeaway-{claim.id}"
        profile = self.profiles.get(claim.device, "")
        if not claim.applies_to(profile):
            return self._keep(key, "takeaway", ConfigOutcome(key, cid, ["takeaway"], Status.SKIPPED,
                                                             f"claim {claim.id} does not apply to profile {profile}"))
        if claim.metric in QUALITY_METRICS:
            return self._keep(key, "takeaway", ConfigOutcome(key, cid, ["takeaway"], Status.SKIPPED,
                                                             f"claim {claim.id}: a quality claim is not compared "
                                                             "under --qp-against (speed claims are)"))
        specs = claim.specs(workload)
        for spec in specs:
            out = self._not_compared(key, "takeaway", cid, self._measure(spec))
            if out is not None:
                out.message = f"claim {claim.id}: {out.message}"
                return out
        measured = {n: {s.id: self._result(s, n) for s in specs} for n in ("A", "B")}
        rows = takeaway_checks([claim], measured, profile, claim.device)
        if not rows:
            return self._keep(key, "takeaway", ConfigOutcome(key, cid, ["takeaway"], Status.ERROR,
                                                             f"claim {claim.id}: not evaluated"))
        row = self.takeaways[claim.id] = rows[0]
        both = "; ".join(f"in {n} {row[n]['verdict']} x{ci_text(row[n]['ratio'], row[n]['low'], row[n]['high'])}"
                         for n in ("A", "B"))
        word = row["status"].upper() if row["status"] != Status.OK else "same verdict"
        message = f"{word} takeaway {claim.id} ({row['claimed']}): {both} | packages that differ: {self.differ}"
        return self._keep(key, "takeaway", ConfigOutcome(key, cid, ["takeaway"], row["status"], message))

    # -- the end -------------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        """Outcomes by word: same, regressed, improved, inconclusive, flipped (takeaways), error, skipped."""
        out = dict.fromkeys(("same", "regressed", "improved", "inconclusive", "flipped", "error", "skipped"), 0)
        words = {Status.OK: "same", Status.REGRESSED: "regressed", Status.IMPROVED: "improved",
                 Status.INCONCLUSIVE: "inconclusive", Status.FLIPPED: "flipped", Status.ERROR: "error",
                 Status.SKIPPED: "skipped"}
        for _, o in self.outcomes.values():
            if o.status in words:
                out[words[o.status]] += 1
        return out

    def exit_status(self, exitstatus: int, tests_failed: int, strict: bool = False) -> int:
        """EXIT_SIDE_FAILED when a configuration could not be compared because a side failed and
        no test failed otherwise (a regression or a flipped claim keeps pytest's 1)."""
        c = self.counts()
        failed_ab = c["regressed"] + c["flipped"] + (c["inconclusive"] if strict else 0)
        if c["error"] and not failed_ab and tests_failed <= c["error"] and exitstatus in (0, 1):
            return EXIT_SIDE_FAILED
        return exitstatus

    def report(self) -> UpgradeReport:
        from .ahead import overlap_default
        from .shared import AB_SAMPLE_BUDGET_MS, shared_modes

        checks = [c for c, _ in self.checks.values()]
        device = checks[0].spec["device"] if checks else next(iter(self.profiles), "cpu")
        overlay = self.overlay.to_dict() if self.overlay is not None else {"python": self.against.python}
        kernel_budget = AB_SAMPLE_BUDGET_MS if "kernel" in shared_modes() else None  # set on shared pairs only
        rep = UpgradeReport(kind="against", profile=self.profiles.get(device, "?"), device=device,
                            overlay=overlay | {"spec": self.against.text, "form": self.against.form},
                            describe=f"A: {self.describe_a} (--qp-against) | B: {self.describe_b}\n"
                                     f"packages that differ: {self.differ}",
                            settings={"pairs": self.pairs, "blocks": self.blocks, "max_blocks": self.max_blocks,
                                      "alpha": self.alpha, "statistic": STATISTIC,
                                      "shared_modes": list(shared_modes()),
                                      "kernel_sample_budget_ms": kernel_budget,
                                      "overlap": overlap_default(device)},
                            configs=checks, quality=list(self.quality_rows.values()),
                            takeaways=list(self.takeaways.values()), calibration=self.calibration,
                            notes=list(dict.fromkeys(self.notes + ([self.failure] if self.failure else []))))
        rep.memory = [r for rows in self.memory.values() for r in rows]
        rep.phases = check_phases([c.to_dict() for c in checks], rep.quality, phase_clock() - self._started)
        return rep

    def close(self) -> None:
        if self._quality_ahead is not None:  # pairs started for quality tests that never ran (-x, an interrupt)
            self._quality_ahead.close()
        if self._next is not None:  # the first pair of a configuration whose test never ran
            self._next[2].close()
            self._next = None
        if self.overlay is not None:
            self.overlay.cleanup()
