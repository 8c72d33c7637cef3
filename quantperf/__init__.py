"""quantperf: a pytest-based performance regression suite for LLM quantization."""

from .results import Metric, RunResult
from .scheduler import measure, measure_many
from .spec import RunSpec, Workload

__version__ = "0.1.0"
__all__ = ["measure", "measure_many", "Metric", "RunResult", "RunSpec", "Workload", "__version__"]
