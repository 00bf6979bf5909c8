"""What this machine's CPU can do, without torch: its model name and the instruction-set flags that decide
precision and kernels (bf16 training, int8 dot products).

    cpu = cpu_features()
    cpu.model               # "Intel(R) Xeon(R) Platinum 8480+"
    cpu.has("avx512_vnni")  # one flag, as the kernel lists it in /proc/cpuinfo
    cpu.has_bf16()          # native bf16 arithmetic: AMX or AVX-512 BF16
    cpu.summary()           # {"model": ..., "flags": {"avx2": True, ...}} for reports such as the bench JSON

The flags are read from /proc/cpuinfo, so on Linux only; elsewhere the model comes from `platform`
and no flag is known, which every helper reads as "absent" (the safe answer: fp32, no VNNI path).
"""
import functools
import platform
from dataclasses import dataclass
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")

# The flags that change what this project does, as the Linux kernel names them.
REPORTED_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")


@dataclass(frozen=True)
class CpuFeatures:
    model: str
    flags: frozenset

    def has(self, flag: str) -> bool:
        return flag in self.flags

    def has_bf16(self) -> bool:
        """bf16 matrix arithmetic in hardware (AMX or AVX-512 BF16): where bf16 autocast pays on a CPU.
        Without it bf16 is emulated and several times slower than fp32."""
        return self.has("amx_bf16") or self.has("avx512_bf16")

    def has_amx(self) -> bool:
        return self.has("amx_tile")

    def has_int8_dot(self) -> bool:
        """A u8 x s8 dot-product instruction (AVX-512 VNNI or AVX-VNNI)."""
        return self.has("avx512_vnni") or self.has("avx_vnni")

    def summary(self) -> dict:
        """JSON-ready: the model name and each of REPORTED_FLAGS with whether this CPU has it."""
        return {"model": self.model, "flags": {flag: self.has(flag) for flag in REPORTED_FLAGS}}


def parse_cpuinfo(text: str) -> CpuFeatures:
    """The first processor's model name and flags in /proc/cpuinfo text (every core of a machine lists the same)."""
    model, flags = "", frozenset[str]()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key in ("flags", "Features") and not flags:  # "Features" on ARM
            flags = frozenset(value.split())
    return CpuFeatures(model or platform.processor() or platform.machine(), flags)


@functools.lru_cache(maxsize=1)
def cpu_features() -> CpuFeatures:
    """This machine's CPU, read once per process."""
    try:
        return parse_cpuinfo(CPUINFO.read_text())
    except OSError:  # not Linux: no flags known
        return CpuFeatures(platform.processor() or platform.machine(), frozenset())
