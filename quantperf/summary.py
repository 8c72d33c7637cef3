"""The typed summary of a session: what each configuration's gate said, each claim's verdict,
the noise figures and what was recorded. The suite writes it (`summary.json`); every renderer
(terminal, JSON, markdown, HTML) reads it. Plain dataclasses that round-trip to JSON."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .phases import merge as merge_phases
from .results import atomic_write_text, dump_json
from .status import Status

SUMMARY_SCHEMA = 2


@dataclass
class MetricVerdict:
    metric: str
    status: str  # ok | regressed | improved | inconclusive | changed-insignificant | new
    current: float
    baseline: float | None = None
    ratio: float | None = None
    ci: list[float] | None = None
    tolerance: float | None = None
    p_value: float | None = None
    noise_floor: float | None = None
    line: str = ""
    notes: list[str] = field(default_factory=list)


@dataclass
class ConfigOutcome:
    key: str  # "<config id>:<kinds>" (quality configurations are prefixed "quality:")
    config_id: str
    kinds: list[str]
    status: str  # ok | regressed | improved | inconclusive | no-baseline | recorded | skipped | error
    message: str = ""
    verdicts: list[MetricVerdict] = field(default_factory=list)
    version_changes: dict = field(default_factory=dict)
    decode_tokens_per_s: float | None = None  # the headline figure, for tables
    # runtime settings and versions that differ from the baseline: {field: [baseline, now]} (quantperf.fidelity)
    runtime_changes: dict = field(default_factory=dict)
    runtime: dict = field(default_factory=dict)  # what the gated run really ran (RunResult.runtime)


@dataclass
class ClaimOutcome:
    id: str
    profile: str
    verdict: str  # holds | flipped | inconclusive
    expected: str | None  # None: no verdict recorded for the profile yet
    ratio: float | None
    ci: list[float | None]
    p_value: float | None
    message: str
    sentence: str = ""
    claimed: str = ""
    a: str = ""
    b: str = ""
    metric: str = ""


@dataclass
class NoiseLine:
    """One measured configuration's round-to-round noise in this run."""

    config_id: str
    median: float
    cv: float
    rounds: int
    min_detectable: float
    adaptive_extra_rounds: int = 0
    validity: str = ""


@dataclass
class SessionSummary:
    profiles: dict
    configs: list[ConfigOutcome] = field(default_factory=list)
    claims: list[ClaimOutcome] = field(default_factory=list)
    noise: list[NoiseLine] = field(default_factory=list)
    repeatability: list[dict] = field(default_factory=list)
    sensitivity: list[dict] = field(default_factory=list)
    recorded: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # session-wide lines (e.g. the session shift)
    results_path: str | None = None
    # where the session's time went (quantperf.phases.session_phases): totals, wall, other, per configuration
    phases: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"schema": SUMMARY_SCHEMA, **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict) -> "SessionSummary":
        d = {k: v for k, v in d.items() if k != "schema"}
        d["configs"] = [ConfigOutcome(**{**c, "verdicts": [MetricVerdict(**v) for v in c.get("verdicts", [])]})
                        for c in d.get("configs", [])]
        d["claims"] = [ClaimOutcome(**c) for c in d.get("claims", [])]
        d["noise"] = [NoiseLine(**n) for n in d.get("noise", [])]
        return cls(**d)

    def write(self, path: str | Path) -> None:
        atomic_write_text(path, dump_json(self.to_dict()))

    @classmethod
    def read(cls, path: str | Path) -> "SessionSummary":
        """A summary.json; anything else (not JSON, another document) is one ResultsError naming
        the file and what is wrong."""
        from .errors import ResultsError

        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ResultsError(f"{path}: cannot read ({exc.strerror or exc})") from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise ResultsError(f"{path}: not a quantperf summary.json (not valid JSON: {exc})") from None
        try:
            if not isinstance(data, dict):
                raise TypeError(f"the top level is {type(data).__name__}, not an object")
            return cls.from_dict(data)
        except (TypeError, AttributeError, KeyError, ValueError) as exc:
            reason = " ".join(str(exc).split())[:200]
            raise ResultsError(f"{path}: not a quantperf summary.json ({type(exc).__name__}: {reason})") from None

    @classmethod
    def merge(cls, parts: list["SessionSummary"], results_path: str | None = None) -> "SessionSummary":
        """One session's summary from its shards' (pytest-xdist workers, one per GPU): every
        configuration, claim and line of each, in worker order."""
        out = cls(profiles={}, results_path=results_path)
        for part in parts:
            out.profiles.update(part.profiles)
            for name in ("configs", "claims", "noise", "repeatability", "sensitivity", "recorded", "notes"):
                getattr(out, name).extend(getattr(part, name))
        out.phases = merge_phases([p.phases for p in parts])
        return out

    @property
    def regressions(self) -> list[ConfigOutcome]:
        return [c for c in self.configs if c.status == Status.REGRESSED]

    @property
    def flips(self) -> list[ClaimOutcome]:
        """Claims whose verdict differs from the one expected on their profile. A claim with no
        expectation yet (its first measurement there) is reported, not counted as a flip."""
        return [c for c in self.claims if c.expected is not None and c.verdict not in (c.expected, Status.INCONCLUSIVE)]
