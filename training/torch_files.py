"""torch.save and torch.load for every file the training side writes and reads (checkpoint.pt,
tokenizer.pt, train_state.pt): atomic writes, and loads with weights_only=True whose every failure
is a CheckpointError."""
import pickle
import pickletools
import zipfile
from pathlib import Path

import torch

from dnd_sdk.errors import CheckpointError
from dnd_sdk.folders import atomic_write


def atomic_torch_save(obj, path) -> None:
    """torch.save through a temporary file beside `path`: a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: torch.save(obj, tmp), to_name=True)


def read_torch_file(path: Path, mmap: bool = False):
    """torch.load with weights_only=True; every way the file can be unreadable becomes a CheckpointError.
    mmap: tensors stay in the file's pages until touched (the way to open a multi-GB checkpoint)."""
    if not zipfile.is_zipfile(path):  # torch.save has written zip archives since torch 1.6
        raise CheckpointError(f"{path}: not a complete file written by torch.save (a text file, or truncated or "
                              "corrupt?). Pass a checkpoint.pt written by `dnd train`.")
    check_crcs(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        # weights_only refuses any global it does not know: a file that would run code lands here
        refused = [line for line in str(e).splitlines() if "GLOBAL" in line or "Unsupported global" in line]
        if not refused:
            raise CheckpointError(f"{path}: not a readable torch file (corrupt?): {str(e).splitlines()[0]}") from None
        raise CheckpointError(
            f"{path}: refused to load, the file holds Python objects that a dnd file must not contain "
            f"(loading it could run code). Re-save it with the dnd training code. Detail: {refused[0]}") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, KeyError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable torch file (truncated or corrupt?): {e}") from None


_CHUNK = 1 << 20


def check_crcs(path: Path) -> None:
    """Refuse a torch file whose bytes were damaged after it was written, naming the damaged tensor.

    torch's reader skips the zip's CRC-32 checks (and a mmap load reads the tensors' bytes straight from the
    file), so a flipped bit would load as a wrong weight without a word. Each entry is read through once in
    chunks, so memory stays flat however large the file."""
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if not _crc_matches(archive, info):
                    raise CheckpointError(f"{path}: damaged: {_what(archive, info)} does not match the CRC-32 its "
                                          "archive stored, so the file changed after torch.save wrote it (a disk or "
                                          "copy error). Use another copy of the file, or an earlier checkpoint.")
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as e:
        raise CheckpointError(f"{path}: not a readable torch file (truncated or corrupt?): {e}") from None


def _crc_matches(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bool:
    try:
        with archive.open(info) as f:  # zipfile compares the CRC-32 once the entry is read to its end
            while f.read(_CHUNK):
                pass
    except zipfile.BadZipFile as e:
        if "CRC" in str(e):
            return False
        raise
    return True


def _what(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> str:
    """The damaged entry in words: the tensor whose bytes it holds where the file's index still reads."""
    name = info.filename
    folder, _, key = name.rpartition("/data/")
    if not folder:
        return f"entry {name!r}" + (" (the file's index of its tensors)" if name.endswith("data.pkl") else "")
    try:
        tensor = _storage_tensors(archive.read(f"{folder}/data.pkl")).get(key)
    except (zipfile.BadZipFile, KeyError, ValueError):
        tensor = None
    return f"tensor {tensor!r} (entry {name!r})" if tensor else f"entry {name!r}"


def _storage_tensors(index: bytes) -> dict:
    """{storage key: the state-dict key of the first tensor that reads it}, from the pickle torch.save writes,
    read as opcodes only (nothing in it is built or run). A tensor is pickled as its key, then
    `_rebuild_tensor_v2`, then the persistent id ('storage', type, KEY, location, numel)."""
    pushed, memo, names = [], {}, {}
    for op, arg, _ in pickletools.genops(index):
        if op.name in ("BINUNICODE", "SHORT_BINUNICODE", "UNICODE", "BINUNICODE8"):
            pushed.append(arg)
        elif op.name in ("GLOBAL", "STACK_GLOBAL"):
            pushed.append(("global", arg))
        elif op.name in ("BINPUT", "LONG_BINPUT", "PUT"):
            memo[arg] = pushed[-1] if pushed else None
        elif op.name == "MEMOIZE":
            memo[len(memo)] = pushed[-1] if pushed else None
        elif op.name in ("BINGET", "LONG_BINGET", "GET"):
            pushed.append(memo.get(arg))
        elif op.name == "BINPERSID":
            _name_storage(pushed, names)
    return names


def _name_storage(pushed: list, names: dict) -> None:
    starts = [i for i, x in enumerate(pushed) if x == "storage"]
    if not starts or starts[-1] + 2 >= len(pushed):
        return
    at = starts[-1]
    rebuilds = [i for i, x in enumerate(pushed[:at]) if isinstance(x, tuple) and "_rebuild_tensor" in str(x[1])]
    keys = [x for x in pushed[:rebuilds[-1]] if isinstance(x, str)] if rebuilds else []
    if keys and isinstance(pushed[at + 2], str):
        names.setdefault(pushed[at + 2], keys[-1])
    del pushed[:]
