"""Whether two runs' runtime identities (quantperf.fidelity) let one gate the other.

A runtime *setting* that differs (the Hub-kernels setting, the kernelized layers, the attention
implementation, the KV-cache class, float32 matmul precision and the TF32 flags) means other code
ran: the run is INCOMPARABLE with its baseline and stays out of the pooled run-level gate. A
runtime *version* that differs (CUDA, cuDNN, cuBLAS, kernels) is what an upgrade changes: gated
as usual, and named. A baseline recorded before runtime identities were kept is gated as before,
with a note that says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..fidelity import as_recorded, changes_text, setting_changes, version_changes
from ..status import Status

NO_RUNTIME_NOTE = "baseline has no runtime identity (recorded before quantperf kept one): gated as before"


@dataclass
class RuntimeCheck:
    """`status` INCOMPARABLE when a setting differs (None: gate as usual); `settings` and `versions`:
    {field: (baseline, now)}; `notes`: what the outcome's message says beside its verdict."""

    status: Status | None = None
    settings: dict = field(default_factory=dict)
    versions: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def changes(self) -> dict:
        """Every difference, settings and versions, as lists (JSON) for an outcome's record."""
        return {k: list(v) for k, v in (self.settings | self.versions).items()}

    def message(self, config_id: str) -> str:
        return (f"INCOMPARABLE {config_id}: runtime settings differ from the baseline "
                f"({changes_text(self.settings)}): not the same configuration, not gated; re-record the baseline "
                "if the change is intended, or make it a configuration of its own")


def check_runtime(baseline: dict | None, now: dict) -> RuntimeCheck:
    """A run's runtime identity `now` against its baseline's (None: recorded before it was kept). A
    setting the baseline did not record has the value every run had before it was kept
    (`fidelity.as_recorded`: kernel mode walked all layers)."""
    before = as_recorded(baseline)
    if not baseline:
        settings = setting_changes(before, now)
        if settings:
            return RuntimeCheck(Status.INCOMPARABLE, settings, {}, [NO_RUNTIME_NOTE])
        return RuntimeCheck(notes=[NO_RUNTIME_NOTE] if now else [])
    settings, versions = setting_changes(before, now), version_changes(baseline, now)
    out = RuntimeCheck(Status.INCOMPARABLE if settings else None, settings, versions)
    if versions:
        out.notes.append("runtime versions differ from the baseline: " + changes_text(versions))
    return out


def sides_note(a: dict | None, b: dict | None) -> str | None:
    """The A/B's note where its sides ran different runtime settings: still measured (that is what
    the upgrade changed), but said. None when they agree (or a side recorded none)."""
    settings = setting_changes(a or {}, b or {})
    if not settings:
        return None
    return "the sides ran different runtime settings (A -> B): " + changes_text(settings)
