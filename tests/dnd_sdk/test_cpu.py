"""The one CPU probe (dnd_sdk.cpu): model name and flags from /proc/cpuinfo, without torch."""
from pathlib import Path

import pytest

from dnd_sdk.cpu import REPORTED_FLAGS, CpuFeatures, cpu_features, parse_cpuinfo

SAPPHIRE_RAPIDS = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse2 avx avx2 avx512f avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8

processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse2 avx avx2 avx512f avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8
"""
HASWELL = "processor\t: 0\nmodel name\t: Intel(R) Core(TM) i7-4770 CPU @ 3.40GHz\nflags\t\t: fpu sse2 avx avx2 fma\n"


def test_parse_reads_the_model_and_flags():
    spr, old = parse_cpuinfo(SAPPHIRE_RAPIDS), parse_cpuinfo(HASWELL)
    assert spr.model == "Intel(R) Xeon(R) Platinum 8480+" and old.model.startswith("Intel(R) Core(TM) i7-4770")
    assert spr.has_bf16() and spr.has_amx() and spr.has_int8_dot()
    assert old.has("avx2") and not old.has_bf16() and not old.has_amx() and not old.has_int8_dot()
    assert CpuFeatures("x", frozenset({"avx_vnni"})).has_int8_dot()
    assert CpuFeatures("x", frozenset({"avx512_bf16"})).has_bf16()


def test_summary_lists_every_reported_flag():
    summary = parse_cpuinfo(HASWELL).summary()
    assert summary["model"].startswith("Intel(R) Core(TM) i7-4770")
    assert list(summary["flags"]) == list(REPORTED_FLAGS)
    assert summary["flags"]["avx2"] is True and summary["flags"]["amx_tile"] is False


@pytest.mark.skipif(not Path("/proc/cpuinfo").is_file(), reason="flags are read from Linux's /proc/cpuinfo")
def test_this_machine_matches_proc_cpuinfo():
    cpu = cpu_features()
    text = Path("/proc/cpuinfo").read_text()
    assert cpu.model and cpu.model in text
    assert cpu.has("avx2") == (" avx2" in text) and cpu.flags
    assert "import torch" not in (Path(__file__).parents[2] / "dnd_sdk" / "cpu.py").read_text()
