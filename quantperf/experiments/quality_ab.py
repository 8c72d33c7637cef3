"""Quality under an A/B (`quantperf upgrade-check` and `pytest benchmarks --qp-against`): per
backend, side A's fresh process writes the reference log-probabilities on the corpus and side B's
same backend compares against them (scheduler.measure_quality's two passes, a side per
environment), giving a verdict: identical | changed | beyond-limits.

No figure of a quality check is a time, so nothing in it waits for an interpreter to start: a
configuration's two processes start together (B's imports run while A computes the reference), and
the caller starts the next configurations' pairs (`QualityAhead`, QUALITY_AB_AHEAD of them) while
this one is compared. On an H100 tier A/B, seven quality configurations one process after the other
took 240 s, 11-13 s of each side's 15 being the interpreter's start and imports."""

from __future__ import annotations

import contextlib
import os
import tempfile

from ..gate.ab import quality_verdict
from ..spec import RunSpec
from ..starting import Starting, environment_key, known_unavailable
from ..status import Status
from .upgrade import SIDE_NAMES, Sides, _failure, _first_line, identity_core

# configurations whose two processes start while the current one is compared: a pair's start and
# imports (11-13 s on an H100 host) outlast one configuration's loads and passes (5-7 s), so two
QUALITY_AB_AHEAD = 2


def start_sides(spec: RunSpec, sides: Sides, model_options: dict | None) -> dict[str, Starting]:
    """Side A's and side B's fresh processes for `spec`, starting (spawn, imports, CUDA context) in
    threads; none for a side whose backend this session already found unavailable there."""
    out: dict[str, Starting] = {}
    try:
        for n in SIDE_NAMES:
            if not known_unavailable(spec, **sides.kwargs(n)):
                out[n] = Starting(spec, model_options, **sides.kwargs(n))
    except BaseException:
        close_started(out)
        raise
    return out


def sides_key(sides: Sides) -> int:
    """What both sides' processes started now inherit, as a key: a process pair started under
    another key is not used (starting.environment_key)."""
    return hash(tuple(environment_key(sides.kwargs(n).get("env")) for n in SIDE_NAMES))


def close_started(started: dict[str, Starting] | None) -> None:
    for one in (started or {}).values():
        one.close()


class QualityAhead:
    """The process pairs of quality configurations started before their turn: `start(specs)` while
    something else is compared, `take(spec)` at its turn; `close()` ends those never taken. A pair
    started in an environment that changed since is closed at `take` (a fresh pair starts instead)."""

    def __init__(self, sides: Sides, model_options: dict | None = None):
        self.sides, self.model_options = sides, dict(model_options or {})
        self._pairs: dict[str, tuple[int, dict[str, Starting]]] = {}

    def _key(self) -> int:
        return sides_key(self.sides)

    def start(self, specs) -> None:
        for spec in specs:
            if spec.id not in self._pairs:
                self._pairs[spec.id] = (self._key(), start_sides(spec, self.sides, self.model_options))

    def take(self, spec: RunSpec) -> dict[str, Starting] | None:
        key, pair = self._pairs.pop(spec.id, (None, None))
        if pair is not None and key != self._key():
            close_started(pair)
            return None
        return pair

    def turn(self, spec: RunSpec, following) -> dict[str, Starting] | None:
        """`spec`'s pair (started ahead, or None: quality_check starts one), and the pairs of
        `following` started while `spec` is compared."""
        started = self.take(spec)
        try:
            self.start(following)
        except BaseException:
            close_started(started)
            raise
        return started

    def close(self) -> None:
        while self._pairs:
            close_started(self._pairs.popitem()[1][1])


def quality_check(spec: RunSpec, sides: Sides, params: dict, *, environment: dict | None = None,
                  profile: str | None = None, model_options: dict | None = None,
                  started: dict[str, Starting] | None = None) -> dict:
    """Outputs of B against A for one backend: A's pass writes the reference log-probabilities,
    B's same backend compares against them. `started`: both sides' processes started ahead
    (QualityAhead.take); none: both start now, together. Returns the figures and a verdict."""
    from ..backends import entry
    from ..scheduler import open_side

    out = {"config_id": "quality-" + spec.id, "backend": spec.backend, "model": spec.model, "status": Status.OK}
    started, ref_file = dict(start_sides(spec, sides, model_options) if started is None else started), None
    stats_by_side = {}
    try:
        fd, ref_file = tempfile.mkstemp(prefix="quantperf-upgrade-ref-", suffix=".npy")
        os.close(fd)
        for name, role in (("A", "reference"), ("B", "compare")):
            side = open_side(spec, environment=environment, profile=profile,
                             model_options=dict(model_options or {}), warm=False, worker=started.pop(name, None),
                             **sides.kwargs(name))
            if not side.ok:
                label = sides.label_a if name == "A" else sides.label_b
                return out | {"status": Status.SKIPPED if name == "A" and side.failed.status == Status.UNAVAILABLE
                              else Status.ERROR,
                              "message": f"quality {spec.id}: side {name} ({label}): {side.failed.status}: "
                                         f"{_first_line(side.failed.reason or '')}"}
            try:
                stats_by_side[name] = side.worker.quality(params=dict(params) | {
                    "role": role, "file": ref_file, "reference_backend": f"{spec.backend} in A"})
                out[f"identity_{name}"] = side.info.get("identity")
                out.setdefault("runtime", {})[name] = side.worker.runtime()
            except Exception as exc:
                return out | {"status": Status.ERROR, "message": f"quality {spec.id}: side {name}: {_failure(exc)}"}
            finally:
                side.close()
    finally:
        close_started(started)  # side B's, where side A failed; both, where the temp file could not be made
        if ref_file is not None:
            with contextlib.suppress(OSError):  # the reference logits' temp file
                os.unlink(ref_file)
    if identity_core(out.get("identity_A")) != identity_core(out.get("identity_B")):
        return out | {"status": Status.ERROR, "message": f"quality {spec.id}: backend identity differs between A and B"}
    b = stats_by_side["B"]
    stats = {k: v for k, v in b.items() if k != "generations"}
    gen_a, gen_b = stats_by_side["A"].get("generations", []), b.get("generations", [])
    verdict, violations = quality_verdict(b, entry(spec.backend).quality_class)
    return out | {"stats": stats, "generations_match": gen_a == gen_b, "verdict": verdict, "violations": violations,
                  "quality_class": entry(spec.backend).quality_class,
                  "generations": {"A": gen_a, "B": gen_b} if gen_a != gen_b else {}}
