"""Whose run folder is it: a new run starts only in a folder that holds no run, `--resume` only in one that
holds a resumable run, and `--force` starts over by deleting what a run writes (and nothing else).

Called before anything is written, on every process before they meet in `init_distributed`, so a refused
start leaves the folder as it was.
"""
from pathlib import Path

from dnd_sdk.errors import CheckpointError, InvalidInputError

# the files that make a folder a run folder (`dnd train` writes them at its top level)
RUN_FILES = ("config.yaml", "checkpoint.pt", "train_state.pt", "log.jsonl", "tokenizer.pt")
# what a run writes besides them, deleted by --force too: its plots, sample grids and TensorBoard events
RUN_OUTPUTS = ("loss.png", "samples/step*.png", "tensorboard/events.out.tfevents.*")


def run_files(out: Path) -> list:
    return [name for name in RUN_FILES if (out / name).exists()]


def claim_run_folder(out, *, resume: bool = False, force: bool = False) -> None:
    """Refuse a start that would mix two runs in `out`; with force, delete the old run's files first."""
    out = Path(out)
    if resume and force:
        raise InvalidInputError("--resume continues the run in the folder and --force deletes it; give one of them")
    if resume:
        if not (out / "train_state.pt").is_file():
            raise CheckpointError(f"--resume: no training state at {out / 'train_state.pt'}; start without --resume "
                                  "or point --out (train.out_dir) at the interrupted run")
        return
    if out.exists() and not out.is_dir():
        raise InvalidInputError(f"--out {out} is a file; give a folder for the run")
    found = run_files(out)
    if found and not force:
        raise InvalidInputError(f"{out} already holds a run ({', '.join(found)}); a new run there would mix with it. "
                                "Pass --resume to continue it, --force to start over (deletes its run files), "
                                "or give another folder with --out")
    if found:
        for name in found:
            (out / name).unlink()
        for pattern in RUN_OUTPUTS:
            for path in out.glob(pattern):
                path.unlink()
