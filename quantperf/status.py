"""The one vocabulary of status words: every verdict, outcome and run status the package writes,
prints or compares, each defined once here.

A `Status` is a `str`, so a member equals its word (`Status.OK == "ok"`) and results, baselines,
summaries and reports stored as JSON keep the words they always had. Only `quantperf.gate`
decides which word a measurement earns; every other module reads or passes the words on.
"""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    # verdicts: a figure, a configuration or a comparison against a reference
    OK = "ok"  # within tolerance (an equivalence shown, where the gate can show one)
    IMPROVED = "improved"
    REGRESSED = "regressed"
    INCONCLUSIVE = "inconclusive"
    CHANGED_INSIGNIFICANT = "changed-insignificant"  # moved past tolerance, within noise
    NEW = "new"  # a metric the baseline does not hold
    # a compared figure that is zero on a side: only equality can be said
    CHANGED = "changed"
    # claims (takeaways)
    HOLDS = "holds"
    FLIPPED = "flipped"
    # quality of an upgrade's side B against side A
    IDENTICAL = "identical"
    BEYOND_LIMITS = "beyond-limits"
    # outcomes of a configuration that was not (or could not be) gated
    NO_BASELINE = "no-baseline"
    RECORDED = "recorded"
    SKIPPED = "skipped"
    ERROR = "error"
    INCOMPARABLE = "incomparable"  # a backend identity differs: not the same configuration
    # a measurement run
    UNAVAILABLE = "unavailable"
    MODE_UNSUPPORTED = "mode-unsupported"
    PARTIAL = "partial"  # an experiment stopped before its planned end


# The verdicts a claim can have, and those a takeaways file may expect (the config models' literals)
CLAIM_VERDICTS = (Status.HOLDS.value, Status.FLIPPED.value, Status.INCONCLUSIVE.value)
EXPECTABLE_VERDICTS = CLAIM_VERDICTS[:2]


# Words that upgrade reports and calibrations written before the vocabulary was unified used;
# readers of stored files map them here, nowhere else.
LEGACY_WORDS = {"slower": Status.REGRESSED, "faster": Status.IMPROVED, "same": Status.OK,
                "unsettled": Status.INCONCLUSIVE}


def from_word(word: str | None) -> Status | str | None:
    """A stored word as a Status: an old upgrade-report word maps to its member; None, and a word
    this version does not know (a newer file's), stay as they are, so a report still renders."""
    if word is None or word in LEGACY_WORDS:
        return LEGACY_WORDS.get(word) if word else None
    try:
        return Status(word)
    except ValueError:
        return word
