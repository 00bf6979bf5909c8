"""torch.save and torch.load for every file the training side writes and reads (checkpoint.pt,
tokenizer.pt, train_state.pt): atomic writes, and loads with weights_only=True whose every failure
is a CheckpointError."""
import pickle
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
