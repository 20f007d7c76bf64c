"""The hot path's cost per request must not grow unnoticed: instructions counted, not time.

``benchmarks/hotloop.py`` serves requests through the real data-plane objects over in-memory transports;
under callgrind it counts the instructions one request costs (two runs, N and 2N requests, so start-up
cancels out). The counts move by about 1% between runs and not at all with the machine's load, so a bound
on them is a test that does not flake where a timed one would. The bound is generous (25% over the
figures of ``benchmarks/README.md``): it catches a change that makes every request cost more, not noise.

Skipped where valgrind is missing (``make test`` installs it) or the modules are not compiled (the figures
are those of the mypyc build).
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType

import pytest

HOTLOOP = Path(__file__).resolve().parents[1] / "benchmarks" / "hotloop.py"
#: Instructions per request of the compiled build (benchmarks/README.md, "The socket-free loop").
BASELINE = {"bare": 31_300, "browser": 41_100}
GROWTH = 1.25
REQUESTS, WARMUP = 400, 300


def _hotloop() -> ModuleType:
    if str(HOTLOOP.parent) not in sys.path:
        sys.path.append(str(HOTLOOP.parent))  # it imports its neighbours (the browser's headers)
    spec = importlib.util.spec_from_file_location("fulcrum_hotloop", HOTLOOP)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["fulcrum_hotloop"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def hotloop() -> ModuleType:
    if shutil.which("valgrind") is None:
        pytest.skip("valgrind is not installed (make test installs it): the instruction counts cannot be taken")
    module = _hotloop()
    description = module.build_description()
    if not description.startswith("compiled by mypyc"):
        pytest.skip(f"the bound is for the compiled build; this one is {description}")
    return module


@pytest.fixture(scope="module")
def measured(hotloop: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> dict[str, float]:
    """Instructions per request of each config: the four callgrind runs at once (start-up is most of each)."""
    tmp = tmp_path_factory.mktemp("callgrind")
    runs = [(config, n) for config in BASELINE for n in (REQUESTS, 2 * REQUESTS)]
    with ThreadPoolExecutor(len(runs)) as pool:
        counts = dict(zip(runs, pool.map(lambda run: hotloop.callgrind_instructions(run[0], run[1], WARMUP, tmp),
                                         runs), strict=True))
    return {config: (counts[config, 2 * REQUESTS] - counts[config, REQUESTS]) / REQUESTS for config in BASELINE}


@pytest.mark.parametrize("config", sorted(BASELINE))
def test_instructions_per_request_stay_within_a_quarter_of_the_recorded_figure(
    measured: dict[str, float], config: str
) -> None:
    per_request = measured[config]
    bound = BASELINE[config] * GROWTH
    assert 0.5 * BASELINE[config] < per_request <= bound, (
        f"{config}: {per_request:,.0f} instructions per request, over {bound:,.0f} (the recorded "
        f"{BASELINE[config]:,} plus {GROWTH - 1:.0%}); if the cost is meant, measure with "
        f"`benchmarks/hotloop.py --config {config} --callgrind` and record the new figure"
    )
