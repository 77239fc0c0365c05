"""No hang in jitted vmaps over problems (fresh processes, watchdog): benchmarks/stress.py."""

import pytest

from benchmarks import stress


@pytest.mark.slow
def test_no_hang_in_fresh_processes():
    assert stress.main(["--quick", "--timeout", "600"]) == 0
