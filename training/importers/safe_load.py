"""Read torch files that hold more than tensors, without running any of their code.

    raw = load_untrusted("epoch1_model.pt")     # -> dict; only tensors and plain containers are real

Published tokenizer files carry, beside the weights, pickled objects of the training run (omegaconf
configs, `rqvae.utils.dist.DistEnv`, a `defaultdict`, `typing.Any`). `torch.load(weights_only=True)`
refuses them, and loading them for real would need those packages and would run their code. Here every
global in the file is listed first; the few known harmless ones become inert stand-ins, and anything else
(`os.system`, `builtins.eval`, ...) is refused by name before a single object is built.
"""
import pickle
import zipfile
from pathlib import Path

import torch

from dnd_sdk.errors import CheckpointError
from ..torch_files import read_torch_file

# classes of the training run that only describe it; nothing of them is ever used
HARMLESS_PREFIXES = ("omegaconf.",)
HARMLESS = {"rqvae.utils.dist.DistEnv", "typing.Any", "argparse.Namespace", "collections.defaultdict",
            # default factories a pickled defaultdict names (never called: the stand-in ignores them)
            "builtins.list", "builtins.dict", "builtins.set", "builtins.int", "builtins.float"}


class Inert:
    """Stands in for a harmless class: accepts any constructor arguments and state, keeps nothing."""

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass


def _plain_dict(*args, **kwargs) -> dict:
    # a pickled defaultdict is rebuilt by a call and then filled item by item; torch only fills real dicts
    return {}


def is_harmless(name: str) -> bool:
    return name in HARMLESS or name.startswith(HARMLESS_PREFIXES)


def _stand_in(name: str):
    if name == "collections.defaultdict":
        return _plain_dict
    return type(name.rsplit(".", 1)[-1], (Inert,), {"__module__": __name__})


def load_untrusted(path, mmap: bool = False):
    """torch.load of a file that may hold pickled objects: only tensors, plain containers and inert
    stand-ins come out. Raises CheckpointError for an unreadable file or one naming any other global."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError) as e:
        raise CheckpointError(f"{path}: not a readable torch file (truncated or corrupt?): {str(e).splitlines()[0]}") from None
    refused = sorted(g for g in found if not is_harmless(g))
    if refused:
        raise CheckpointError(f"{path}: refused to load, it names {refused}, which could run code; nothing was "
                              "read. Only tensors and the known training-run objects are accepted.")
    with torch.serialization.safe_globals([(_stand_in(g), g) for g in found]):
        return read_torch_file(path, mmap)
