import os

import pytest
from hypothesis import settings

# CI machines are shared and noisy: property tests assert behaviour, never speed.
settings.register_profile("quantperf", deadline=None)
settings.load_profile("quantperf")

# The deterministic fake backends (quantperf/backends/fake.py) are test doubles: enable them
# for the test suite only. Worker subprocesses inherit the variable.
os.environ["QUANTPERF_TEST_BACKENDS"] = "1"


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory):
    """One synthetic-checkpoint / ONNX cache for the whole test session."""
    path = os.environ.get("QUANTPERF_CACHE") or str(tmp_path_factory.mktemp("qpcache"))
    os.environ["QUANTPERF_CACHE"] = path
    return path
