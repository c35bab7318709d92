"""What every run stamps on its results about where it ran."""

import json
import platform
from pathlib import Path

import pytest

from interlingua.artifacts.files import run_info
from interlingua.provenance import git_hash, machine_info


def test_run_info_names_the_cpu_and_the_flags_that_pick_its_kernels(tiny_config):
    info = json.loads(json.dumps(run_info(tiny_config, "train")))  # all of it serialisable
    machine = info["machine"]
    assert machine == machine_info()
    assert machine["cpus"] >= 1 and machine["platform"] == platform.platform()
    if not Path("/proc/cpuinfo").is_file():
        pytest.skip("no /proc/cpuinfo on this system")
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")),
                 platform.processor() or None)  # no model name line on some ARM kernels
    assert machine["processor"] == model
    line = next((line for line in cpuinfo.splitlines() if line.startswith("flags")), None)  # x86 only
    flags = None if line is None else set(line.split(":", 1)[1].split())
    assert machine["cpu_flags"] == (None if flags is None else
                                    [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags])
    assert info["git"] == git_hash() and info["command"] == "train"
