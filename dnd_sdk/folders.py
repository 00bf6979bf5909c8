"""Files and output folders that appear whole or not at all: written under a temporary name
beside the target, flushed to disk, then moved into place.

    atomic_write(path, lambda f: f.write(data))   # one file
    check_target(out_dir, force, source=input, ours=EXPORTED)   # fail fast, before any slow work
    with staged_folder(out_dir, force, ours=EXPORTED) as tmp:   # EXPORTED: what the command writes
        ...write into tmp...                      # an exception (or Ctrl-C) leaves nothing behind
    with open_regular(path, remedy) as f: ...     # a file a resume trusts: never a FIFO, device or link

Without force, a target that is no longer missing or empty when the new folder is moved into
place (someone wrote into it meanwhile) is left untouched and the new folder dropped. With force,
only a folder the command made itself is replaced (`OwnFiles`): no command deletes what it did not
write. A target that is a link to a folder is written through: the folder it leads to is replaced.

Both fsync what they wrote and then the folder that names it, so a result reported as written
survives a power loss.
"""
import contextlib
import errno
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Optional

from .errors import InvalidInputError, arg

TMP_SUFFIX = ".tmp"


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# read once, at import: reading the umask means setting it, which would race with other threads
UMASK = _read_umask()


def usual_mode(path: str | Path, directory: bool = False) -> None:
    """Give a mkstemp/mkdtemp entry (private: 0600/0700) the mode open()/mkdir() would have given it."""
    os.chmod(path, (0o777 if directory else 0o666) & ~UMASK)


def atomic_write(path: str | Path, write: Callable[[Any], Any], tmp_tag: str = "", keep_existing: bool = False,
                 to_name: bool = False) -> None:
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


def fsync_file(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_folder(folder: str | Path) -> None:
    """Make the names in `folder` (a rename into it, a new file) durable."""
    fsync_file(folder)


def fsync_tree(folder: Path) -> None:
    """fsync every file under `folder`, then every folder, deepest first."""
    for root, _dirs, files in os.walk(folder, topdown=False):
        for name in files:
            fsync_file(os.path.join(root, name))
        fsync_folder(root)


@dataclass(frozen=True)
class OwnFiles:
    """How a command knows a folder of its own making, the only kind its force=True may replace: the folder
    holds `marker`, and every file in it (relative, '/'-separated) is one of the names `pattern` matches.
    Anything else, such as images `dnd generate` or a person put there, is not the command's to delete.
    With `listed`, a file must also be one that the marker lists, intact (`listed(folder)` gives those names,
    None when the marker is not the command's kind): a person's file that happens to bear one of the names,
    or a listed one they changed, is not the command's either."""
    command: str
    marker: str
    pattern: str
    listed: Optional[Callable[[Path], Optional[set]]] = None

    def foreign(self, folder: Path) -> list:
        """What in `folder` this command did not write: every entry when its marker is missing."""
        if not os.path.isfile(folder / self.marker) or os.path.islink(folder / self.marker):
            return sorted(os.listdir(folder))
        intact = self.listed(folder) if self.listed is not None else None
        if self.listed is not None and intact is None:
            return sorted(os.listdir(folder))
        found = []
        for root, dirs, files in os.walk(folder):  # links are listed, never followed
            here = Path(root)
            rel = here.relative_to(folder)
            if here != folder and not dirs and not files:
                found.append(rel.as_posix())  # an empty folder: the command writes none
            found += [(rel / d).as_posix() for d in dirs if (here / d).is_symlink()]
            found += [(rel / f).as_posix() for f in files
                      if not self._written(here / f, (rel / f).as_posix(), intact)]
        return sorted(found)

    def _written(self, path: Path, name: str, intact: Optional[set]) -> bool:
        return (re.fullmatch(self.pattern, name) is not None and stat.S_ISREG(os.lstat(path).st_mode)
                and (intact is None or name in intact))


def through_link(out_dir: Path) -> Path:
    """`out_dir`, or the folder it leads to when it is a link: a new folder replaces the link's target, so the
    folder the link names receives it (replacing the link itself would leave that folder as it was)."""
    return Path(os.path.realpath(out_dir)) if out_dir.is_symlink() and out_dir.is_dir() else out_dir


def check_target(out_dir: Path, force: bool, source: Optional[Path] = None,
                 ours: Optional[OwnFiles] = None) -> None:
    """Refuse a target that is a file, a non-empty folder unless `force`, a non-empty folder that `ours` (the
    command's own files) does not recognise as one it made, a folder that cannot be moved aside (the current
    folder or one above it, a mount point), or one that holds `source` (the input the new folder is written
    from). A link to a folder is judged by the folder it leads to."""
    if out_dir.exists() and not out_dir.is_dir():
        raise InvalidInputError(f"{out_dir} exists and is not a folder; choose another {arg('out_dir')}")
    if out_dir.is_symlink() and not out_dir.exists():
        raise InvalidInputError(f"{out_dir} is a link that leads nowhere (broken, or a loop); remove it or choose "
                                f"another {arg('out_dir')}")
    if source is not None and holds(out_dir, Path(source)):
        raise InvalidInputError(f"{out_dir} holds the input {source}: replacing it would delete the input; "
                                f"choose another {arg('out_dir')}")
    if holds(out_dir, Path.cwd()):
        # the folder is swapped by renaming: the current folder (".") cannot be renamed, and a shell
        # inside a replaced folder would be left in a deleted one
        raise InvalidInputError(f"{out_dir} is the current folder or holds it, so it cannot be replaced; "
                                f"choose another {arg('out_dir')}, or run from outside it")
    if out_dir.is_dir() and os.path.ismount(through_link(out_dir)):
        raise InvalidInputError(f"{out_dir} is a mount point, which cannot be replaced by renaming; "
                                "choose a folder inside it")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not force:
            raise InvalidInputError(f"{out_dir} exists and is not empty; pass {arg('force')}=True to replace it, "
                                    f"or choose another {arg('out_dir')}")
        _check_own(out_dir, ours)


def _check_own(out_dir: Path, ours: Optional[OwnFiles], meanwhile: bool = False) -> None:
    """force=True replaces a folder only when everything in it is the command's own output."""
    foreign = ours.foreign(through_link(out_dir)) if ours is not None else sorted(os.listdir(out_dir))
    if foreign:
        maker = ours.command if ours is not None else "this command"
        listed = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise InvalidInputError(f"{out_dir} {'now holds' if meanwhile else 'holds'} {listed}, which {maker} did "
                                f"not write: {arg('force')}=True replaces only a folder {maker} made itself and "
                                f"deletes nothing else. Move those files out of it or choose another {arg('out_dir')}")


def holds(folder: Path, path: Path) -> bool:
    """Whether `path` is `folder` or lies inside it, links followed."""
    folder, path = Path(os.path.realpath(folder)), Path(os.path.realpath(path))  # realpath: a link loop is no error
    return folder == path or folder in path.parents


# what to do after a write failed with each errno (the others need no advice beyond their own words)
_FIXES = {errno.ENOSPC: "Free disk space or choose another folder.",
          errno.EDQUOT: "Free disk space or choose another folder.",
          errno.EFBIG: "The file system or a file-size limit (ulimit -f) refuses files this large: choose another "
                       "folder or raise the limit.",
          errno.EACCES: "Choose a folder you may write in.", errno.EPERM: "Choose a folder you may write in.",
          errno.EROFS: "Choose a folder you may write in."}


def write_failure(out_dir: Path, error: OSError) -> str:
    """What an OSError while writing `out_dir` means, and what to do about it."""
    where = f": {error.filename}" if error.filename else ""
    what = f"writing {out_dir} failed ({error.strerror or error}{where}); nothing was left behind."
    return f"{what} {_FIXES[error.errno]}" if error.errno in _FIXES else what


def _missing_ancestor(folder: Path) -> Optional[Path]:
    """The outermost folder of `folder`'s path that does not exist yet (to remove on failure)."""
    missing = None
    for p in [folder, *folder.parents]:
        if p.exists():
            break
        missing = p
    return missing


def _replace_folder(tmp: Path, out_dir: Path, force: bool, ours: Optional[OwnFiles]) -> None:
    # rename(2) puts a folder in place of a missing or empty one atomically and refuses a non-empty
    # one, so a file written into the target meanwhile (or a concurrent export into it) is never lost
    try:
        os.replace(tmp, out_dir)
        return
    except OSError as e:
        if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise
    if not force:
        raise InvalidInputError(f"{out_dir} was written to while the new folder was being made, so it is no longer "
                                f"empty and was left as it is; pass {arg('force')}=True to replace it, or choose another "
                                f"{arg('out_dir')}")
    _check_own(out_dir, ours, meanwhile=True)  # a file put there since check_target is not ours to delete either
    # keep the old folder until the new one is in place, then delete it
    old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
    try:
        os.replace(out_dir, old / out_dir.name)
    except OSError:
        old.rmdir()
        raise
    try:
        os.replace(tmp, out_dir)
    except OSError:
        os.replace(old / out_dir.name, out_dir)  # put the old folder back before reporting the failure
        old.rmdir()
        raise
    shutil.rmtree(old, ignore_errors=True)


def _remove_created(folder: Path, created: Path) -> None:
    """Remove the empty folders from `folder` up to `created`: whatever someone else put there stays."""
    for p in [folder, *folder.parents]:
        try:
            p.rmdir()
        except OSError:
            return
        if p == created:
            return


@contextlib.contextmanager
def staged_folder(out_dir: Path, force: bool = False, ours: Optional[OwnFiles] = None) -> Iterator[Path]:
    """Yield a temporary folder beside `out_dir` that replaces it when the block ends cleanly; on
    any exception, interrupts included, it is removed with the parent folders it created (those
    still empty). With force, only a folder `ours` recognises is replaced (see check_target); a link
    to a folder is written through."""
    out_dir = Path(out_dir)
    check_target(out_dir, force, ours=ours)
    out_dir = through_link(out_dir)
    created = _missing_ancestor(out_dir.parent)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        usual_mode(tmp, directory=True)
        yield tmp
        fsync_tree(tmp)
        _replace_folder(tmp, out_dir, force, ours)
        fsync_folder(out_dir.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if created is not None:
            _remove_created(out_dir.parent, created)
        raise


def open_regular(path: str | Path, remedy: str) -> Optional[BinaryIO]:
    """`path` opened for binary reading, or None when it does not exist. Anything but a regular file is refused
    by name (InvalidInputError ending in `remedy`) before a byte is read: reading a FIFO blocks for ever, a
    device never ends, and a link may lead anywhere."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)  # NONBLOCK: a FIFO opens at once
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno != errno.ELOOP:
            raise
        raise InvalidInputError(f"{path} is a link, not a file this command wrote. {remedy}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = {stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a device", stat.S_IFBLK: "a device",
                stat.S_IFDIR: "a folder"}.get(stat.S_IFMT(mode), "not a regular file")
        raise InvalidInputError(f"{path} is {kind}, not a file this command wrote. {remedy}")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")
