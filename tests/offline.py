"""Test helper: cut pip and uv off from every configured index and config file, so an overlay is
built from the test's own wheels only (used by the upgrade tests)."""

import os


def isolate_installers(mp) -> None:
    """On a pytest MonkeyPatch: drop PIP_*/UV_* settings, ignore config files, stay offline, and
    start from an empty PYTHONPATH."""
    for var in list(os.environ):
        if var.startswith(("PIP_", "UV_")):
            mp.delenv(var)
    mp.setenv("PIP_CONFIG_FILE", os.devnull)
    mp.setenv("UV_NO_CONFIG", "1")
    mp.setenv("UV_OFFLINE", "1")
    mp.delenv("PYTHONPATH", raising=False)
