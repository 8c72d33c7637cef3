"""Hooks a conftest.py can implement to customise quantperf."""

import pluggy

hookspec = pluggy.HookspecMarker("pytest")


@hookspec(firstresult=True)
def pytest_quantperf_profile(config, device, detected):
    """Return the hardware-profile id to use instead of `detected`, or None to keep it.

    Example (conftest.py), to share baselines between two identical cards::

        def pytest_quantperf_profile(config, device, detected):
            if detected.startswith("nvidia-h100"):
                return "nvidia-h100-80gb-hbm3"
    """
