"""TensorBoard scalars of a run (train.tensorboard: true), through torch.utils.tensorboard, the writer users know:
`tensorboard --logdir runs/` then shows every run's losses, learning rate and grad norm.

The tensorboard package is optional (pip install tensorboard): without it the run says so once and goes on
with log.jsonl and loss.png."""
import logging
from pathlib import Path

logger = logging.getLogger("dnd_training")


class TensorBoardLog:
    def __init__(self, folder: Path, enabled: bool, start_step: int = 0):
        self.writer = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:  # torch's writer imports the tensorboard package
            logger.warning("train.tensorboard is on but TensorBoard cannot be imported (%s); pip install tensorboard. "
                           "Logging to log.jsonl and loss.png only.", e)
            return
        # purge_step: on --resume, events logged after the checkpoint are dropped, as log.jsonl drops its lines
        self.writer = SummaryWriter(str(folder), purge_step=start_step or None)

    def write(self, record: dict) -> None:
        if self.writer is not None:
            for name, value in record.items():
                if name != "step" and isinstance(value, (int, float)):
                    self.writer.add_scalar(name, value, record["step"])
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
