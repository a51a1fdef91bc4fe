"""keep_freed_memory: freed tensors are reused instead of mapped and page-faulted again.

malloc settings are process-wide, so each case runs in a child process. Page faults are
counted (``ru_minflt``), not timed.
"""

import json
import os
import platform
import subprocess
import sys

import pytest

from mask2former.utils.allocator import ENV_SWITCH, keep_freed_memory

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only"
)

# Child: apply the setting (or not), then allocate, fill and free a 64 MiB tensor 8 times;
# report the minor page faults of each of the last 6 rounds (the first two grow the heap).
_CHILD = r"""
import json, resource, sys
import torch
from mask2former.utils.allocator import keep_freed_memory
applied = keep_freed_memory(None if sys.argv[1] == "env" else sys.argv[1] == "on")
faults = []
for _ in range(8):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t = torch.empty(16 * 1024 * 1024, dtype=torch.float32)  # 64 MiB
    t.fill_(1.0)
    del t
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"applied": applied, "faults": faults[2:]}))
"""


def _child(mode, env_value=None):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop(ENV_SWITCH, None)
    if env_value is not None:
        env[ENV_SWITCH] = env_value
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, mode], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_freed_tensor_is_reused_without_page_faults():
    off = _child("off")
    on = _child("on")
    assert off["applied"] is False and on["applied"] is True
    # 64 MiB is 16,384 pages of 4 KiB (or 32 huge pages): malloc's defaults map it afresh and
    # fault it in every round; kept, the same memory comes back already resident.
    assert min(off["faults"]) >= 16, off
    # Kept: the same memory mostly comes back already resident (a round may still fault it in
    # afresh when something else took the freed block in between; seen once in 6 rounds).
    assert sorted(on["faults"])[len(on["faults"]) // 2] * 4 < min(off["faults"]), (on, off)
    assert sum(on["faults"]) * 3 < sum(off["faults"]), (on, off)


@pytest.mark.parametrize(
    "value, applied", [(None, True), ("1", True), ("0", False), ("off", False)]
)
def test_environment_switch(value, applied):
    result = _child("env", value)
    assert result["applied"] is applied
    if not applied:
        assert min(result["faults"]) >= 16, result


def test_switched_off_in_the_call_returns_false():
    assert keep_freed_memory(enabled=False) is False
