"""Files and output folders that appear whole or not at all: written under a temporary name
beside the target, flushed to disk, then moved into place.

    atomic_write(path, lambda f: f.write(data))   # one file
    check_target(out_dir, force)                  # fail fast, before any slow work
    with staged_folder(out_dir, force) as tmp:
        ...write into tmp...                      # an exception (or Ctrl-C) leaves nothing behind

Both fsync what they wrote and then the folder that names it, so a result reported as written
survives a power loss.
"""
import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from .errors import InvalidInputError

TMP_SUFFIX = ".tmp"


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# read once, at import: reading the umask means setting it, which would race with other threads
UMASK = _read_umask()


def usual_mode(path, directory: bool = False) -> None:
    """Give a mkstemp/mkdtemp entry (private: 0600/0700) the mode open()/mkdir() would have given it."""
    os.chmod(path, (0o777 if directory else 0o666) & ~UMASK)


def atomic_write(path, write, tmp_tag: str = "", keep_existing: bool = False, to_name: bool = False) -> None:
    """Call write(file) on a temporary file beside `path`, then rename it into place.

    A reader (or a resumed run) sees either the whole file or none. Temporary files are named
    `.{tmp_tag}{name}.*.tmp`, so a restarted job can find and delete only its own leftovers.
    With keep_existing, a file already at `path` wins, even one that appears while this one
    is written (os.link never replaces). With to_name, write gets the temporary file's name
    instead (for writers that take only a path, such as ONNX Runtime's quantizer).
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{tmp_tag}{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    try:
        usual_mode(tmp)
        with os.fdopen(fd, "wb") as f:
            if not to_name:
                write(f)
        if to_name:
            write(tmp)
        fsync_file(tmp)
        if not keep_existing:
            os.replace(tmp, path)
        elif not path.exists():
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass
        fsync_folder(path.parent)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def fsync_file(path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_folder(folder) -> None:
    """Make the names in `folder` (a rename into it, a new file) durable."""
    fsync_file(folder)


def fsync_tree(folder: Path) -> None:
    """fsync every file under `folder`, then every folder, deepest first."""
    for root, dirs, files in os.walk(folder, topdown=False):
        for name in files:
            fsync_file(os.path.join(root, name))
        fsync_folder(root)


def check_target(out_dir: Path, force: bool) -> None:
    """Refuse a target that is a file, or a non-empty folder unless `force`."""
    if out_dir.exists() and not out_dir.is_dir():
        raise InvalidInputError(f"{out_dir} exists and is not a folder; choose another out_dir", ["out_dir"])
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise InvalidInputError(f"{out_dir} exists and is not empty; pass force=True to replace it, "
                                "or choose another out_dir", ["force", "out_dir"])


def _missing_ancestor(folder: Path):
    """The outermost folder of `folder`'s path that does not exist yet (to remove on failure)."""
    missing = None
    for p in [folder, *folder.parents]:
        if p.exists():
            break
        missing = p
    return missing


def _replace_folder(tmp: Path, out_dir: Path) -> None:
    if not out_dir.exists():
        os.replace(tmp, out_dir)
        return
    # keep the old folder until the new one is in place, then delete it
    old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
    os.replace(out_dir, old / out_dir.name)
    try:
        os.replace(tmp, out_dir)
    except OSError:
        os.replace(old / out_dir.name, out_dir)  # put the old folder back before reporting the failure
        raise
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def staged_folder(out_dir: Path, force: bool = False):
    """Yield a temporary folder beside `out_dir` that replaces it when the block ends cleanly; on
    any exception, interrupts included, it is removed with any parent folders it created."""
    out_dir = Path(out_dir)
    check_target(out_dir, force)
    created = _missing_ancestor(out_dir.parent)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        usual_mode(tmp, directory=True)
        yield tmp
        fsync_tree(tmp)
        _replace_folder(tmp, out_dir)
        fsync_folder(out_dir.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        raise
