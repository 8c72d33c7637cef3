"""Root conftest: makes the quantperf plugin available when running from a clone that has
not been `pip install`-ed (an installed quantperf registers it through its pytest11 entry
point, and must not be registered twice)."""

import importlib.metadata

if not any(ep.name == "quantperf" for ep in importlib.metadata.entry_points(group="pytest11")):
    pytest_plugins = ["quantperf.plugin"]
