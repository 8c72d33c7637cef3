"""The A/A calibration file of the upgrade check (quantperf.experiments.upgrade): what an A/A run
leaves for later runs on the same machine (per mode, the pooled sd of its pair means), and reading
it back for a profile."""

from __future__ import annotations

import json
import math
from pathlib import Path

from ..errors import ConfigError
from ..gate.ab import CALIBRATION_K, calibrated_tolerance, pooled_sd
from ..status import Status

CALIBRATION_KIND = "quantperf-upgrade-calibration"


def calibration_from(report, k: float = CALIBRATION_K) -> dict:
    """What an A/A run (an upgrade.UpgradeReport) leaves for later runs: per mode, the pooled sd
    of the pair means."""
    by_mode: dict[str, list] = {}
    for c in report.configs:
        if c.status == Status.OK:
            by_mode.setdefault(c.spec["mode"], []).append(c)
    modes = {}
    for mode, checks in by_mode.items():
        sd, df = pooled_sd([c.complete_pair_means for c in checks])
        ends = [max(abs(math.log(c.low)), abs(math.log(c.high))) for c in checks if c.low and c.high]
        modes[mode] = {"spread": sd, "df": df, "configs": [c.config_id for c in checks],
                       "max_abs_log_end": max(ends) if ends else None,
                       "tolerance_floor": calibrated_tolerance(0.0, sd, k)}
    from ..scheduler import now

    return {"kind": CALIBRATION_KIND, "schema": 1, "profile": report.profile, "device": report.device,
            "created": now(), "k": k, "pairs": report.settings.get("pairs"), "blocks": report.settings.get("blocks"),
            "modes": modes}


def read_calibration(path: str | Path, profile: str) -> dict:
    """A calibration file written by `upgrade-check --aa --calibration FILE`, for this profile."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"--calibration {path}: no such file (write one with `quantperf upgrade-check --aa "
                          f"--calibration {path}`)") from None
    except ValueError as exc:
        raise ConfigError(f"--calibration {path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("kind") != CALIBRATION_KIND or not isinstance(data.get("modes"), dict):
        raise ConfigError(f"--calibration {path}: not an upgrade-check calibration (kind {CALIBRATION_KIND!r})")
    if data.get("profile") != profile:
        raise ConfigError(f"--calibration {path}: recorded on profile {data.get('profile')!r}, this machine is "
                          f"{profile!r}; an A/A spread does not carry across machines")
    return data
