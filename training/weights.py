"""Checks and memory handling of loaded weights, shared by every reader of a torch file (checkpoint.pt,
tokenizer.pt, the importer of published files)."""
import ctypes
import sys
from mmap import PAGESIZE

import torch

from dnd_sdk.errors import CheckpointError


def check_weights(name: str, module: torch.nn.Module, state: dict, mapped: bool = False) -> None:
    """The state dict has exactly the module's tensors, with their shapes, float where the module's are
    float, and finite. mapped: the tensors are file-backed (mmap), so each one's pages are handed back
    after its finite check instead of all staying resident."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{name} weights do not match its config: missing {missing[:5]}, unexpected {unexpected[:5]}")
    for key, ref in expected.items():
        if not isinstance(state[key], torch.Tensor) or tuple(state[key].shape) != tuple(ref.shape):
            got = tuple(state[key].shape) if isinstance(state[key], torch.Tensor) else type(state[key]).__name__
            raise CheckpointError(f"{name} weight {key!r} has shape {got}, its config implies {tuple(ref.shape)}")
        tensor = state[key]
        if ref.is_floating_point() and not tensor.is_floating_point():
            raise CheckpointError(f"{name} weight {key!r} is {tensor.dtype}, expected floating point")
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"{name} weight {key!r} holds NaN or infinite values; the training run diverged "
                                  "or the file is damaged. Use an earlier checkpoint.")
        if mapped:
            release_pages(tensor)


def release_pages(t: torch.Tensor) -> None:
    """Drop the resident pages of a tensor read through a private, unwritten file mmap once it is no longer
    needed: reading it faulted them into this process, and the file's mapping lives as long as any tensor of
    the file does, so casting a whole model would otherwise hold both copies. The data stays in the file (and
    the page cache); a later read faults it back in. Only the pages wholly inside the tensor are dropped, and
    only from a file mapping: on anonymous memory (a tensor made after loading, such as a migrated codebook)
    MADV_DONTNEED would replace the data by zeros."""
    if not sys.platform.startswith("linux"):
        return
    storage, page = t.untyped_storage(), PAGESIZE
    lo = (storage.data_ptr() + page - 1) // page * page
    hi = (storage.data_ptr() + storage.nbytes()) // page * page
    if hi > lo and _file_mapped(lo, hi):
        ctypes.CDLL(None).madvise(ctypes.c_void_p(lo), ctypes.c_size_t(hi - lo), 4)  # 4 = MADV_DONTNEED


def _file_mapped(lo: int, hi: int) -> bool:
    """Whether [lo, hi) lies in one mapping of a file (a non-zero inode in /proc/self/maps)."""
    with open("/proc/self/maps") as f:
        for line in f:
            span, _, _, _, inode = line.split(maxsplit=5)[:5]
            start, end = (int(x, 16) for x in span.split("-"))
            if start <= lo < end:
                return hi <= end and inode != "0"
    return False
