"""The results history: every sitting kept (a directory or a git branch), baselines derived from
a rolling window of it, and change points over each metric's history.

- store: the sitting (one run of the suite on one machine) and the directory store
- gitstore: the same store on a git branch of its own, written by compare-and-swap
- baseline: a baselines-file entry derived from the last sittings of each host
- changepoints: E-divisive means with its permutation test, and the environment diff at a point
"""

from .baseline import DEFAULT_WINDOW, apply_derived, derive_baseline
from .changepoints import ChangePoint, EnvironmentDiff, e_divisive, environment_diff, locate, log_change_points
from .gitstore import BranchMovedError, GitBranchStore, open_store
from .store import SCHEMA_VERSION, DirectoryStore, HistoryError, Loaded, Sitting, from_results

__all__ = ["DEFAULT_WINDOW", "SCHEMA_VERSION", "BranchMovedError", "ChangePoint", "DirectoryStore",
           "EnvironmentDiff", "GitBranchStore", "HistoryError", "Loaded", "Sitting", "apply_derived", "derive_baseline",
           "e_divisive", "environment_diff", "from_results", "locate", "log_change_points", "open_store"]
