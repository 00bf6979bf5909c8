"""The training loop both stages share: AdamW + warmup/cosine, grad clipping, optional EMA,
bf16 autocast, DDP, tqdm progress, a JSONL metrics log and atomic resumable state.

Exact resume: every random draw of step t is seeded from (seed, t, rank) and the data of
step t is a pure function of (seed, t) (`batch_indices`), so the training-state file only
needs weights, optimizer, scheduler, EMA and the step; a run stopped at any checkpoint and
resumed reaches the same weights as one that never stopped.
"""
import functools
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from dnd_sdk.cpu import CpuFeatures, cpu_features
from dnd_sdk.errors import CheckpointError, DndError, InvalidInputError
from dnd_sdk.folders import atomic_write, open_regular
from .distributed import Dist, all_mean, barrier, init_distributed, wrap
from .loss_plot import save_loss_plot
from .run_folder import claim_run_folder
from .tensorboard_log import TensorBoardLog
from .torch_files import atomic_torch_save, read_torch_file

STATE_FORMAT = "dnd-train-state"
logger = logging.getLogger("dnd_training")


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 32  # global, split over processes
    lr: float = 3e-4
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 100
    weight_decay: float = 0.05  # on >= 2-D parameters only, as the published recipe
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    grad_clip: float = 1.0
    ema_decay: float = 0.0  # 0 = off; when on, the saved checkpoint holds the EMA weights
    seed: int = 0
    precision: str = "auto"  # auto = bf16 where the device computes in it (CUDA, AMX, AVX-512 BF16), else fp32
    device: str = "auto"
    num_threads: int = 0  # torch CPU threads; 0 = torch's default
    log_every: int = 10
    ckpt_every: int = 500
    sample_every: int = 500  # 0 = no sample grids; loss.png is redrawn with every grid and checkpoint
    tensorboard: bool = False  # also log scalars to out_dir/tensorboard (needs pip install tensorboard)
    out_dir: str = "runs/run"
    init_from: Optional[str] = None  # fine-tune: start from this file's weights (tokenizer.pt or checkpoint.pt)

    def __post_init__(self):
        bad = [k for k in ("steps", "batch_size", "log_every", "ckpt_every") if int(getattr(self, k)) <= 0]
        if bad:
            raise InvalidInputError(f"train.{bad[0]} must be a positive integer, got {getattr(self, bad[0])}")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise InvalidInputError(f"train.precision must be auto, bf16 or fp32, got {self.precision!r}")
        if not 0 <= self.ema_decay < 1:
            raise InvalidInputError(f"train.ema_decay must be in [0, 1) (0 = off), got {self.ema_decay}")


def start_run(cfg: TrainConfig, *, resume: bool, force: bool) -> Dist:
    """Claim the run folder before the run writes anything, then set threads and join the process group."""
    claim_run_folder(cfg.out_dir, resume=resume, force=force)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    return init_distributed(cfg.device)


def check_same_settings(path, what: str, ours: dict, theirs: dict) -> None:
    """train.init_from: a fine-tune keeps every model setting of the file it starts from."""
    differ = {k: (ours[k], theirs.get(k)) for k in ours if ours[k] != theirs.get(k)}
    if differ:
        raise InvalidInputError(f"train.init_from {path}: {what} settings (config, file) differ: {differ}; "
                                "a fine-tune keeps the settings of the file it starts from, so use those")


def step_seed(seed: int, step: int, rank: int = 0) -> int:
    return int(np.random.SeedSequence([seed, step, rank]).generate_state(1)[0])


@functools.lru_cache(maxsize=4)
def _epoch_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(step_seed(seed, epoch, 1 << 20))
    return torch.randperm(n, generator=g)


def batch_indices(seed: int, step: int, batch_size: int, n: int) -> torch.Tensor:
    """Dataset indices of the global batch of `step`: a fresh permutation of the n samples each epoch."""
    positions = torch.arange(step * batch_size, (step + 1) * batch_size)
    out = torch.empty(batch_size, dtype=torch.long)
    for epoch in positions.div(n, rounding_mode="floor").unique().tolist():
        sel = positions.div(n, rounding_mode="floor") == epoch
        out[sel] = _epoch_order(seed, epoch, n)[positions[sel] % n]
    return out


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas))


def lr_factor(cfg: TrainConfig, step: int) -> float:
    """Linear warmup to 1, then cosine down to min_lr_ratio at the last step."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def choose_precision(cfg: TrainConfig, device: torch.device, cpu: Optional[CpuFeatures] = None) -> tuple:
    """("bf16" or "fp32", why). auto takes bf16 only where the hardware computes in it: emulated bf16
    on a CPU without AMX or AVX-512 BF16 trains several times slower than fp32. `cpu`: this machine's."""
    if cfg.precision != "auto":
        return cfg.precision, f"train.precision={cfg.precision} in the config"
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return "bf16", f"auto: {torch.cuda.get_device_name(device)} computes in bf16"
        return "fp32", f"auto: {torch.cuda.get_device_name(device)} has no bf16"
    if device.type == "cpu":
        cpu = cpu or cpu_features()
        if cpu.has_bf16():
            which = "AMX" if cpu.has("amx_bf16") else "AVX-512 BF16"
            return "bf16", f"auto: this CPU ({cpu.model}) has {which}"
        return "fp32", f"auto: this CPU ({cpu.model}) has neither AMX nor AVX-512 BF16, so bf16 would be emulated"
    return "fp32", f"auto: fp32 on {device.type}"


class JsonlLog:
    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled = path, enabled

    def drop_after(self, step: int) -> None:
        """On resume: forget lines logged after the checkpoint, since those steps run again, and a line cut short
        by a kill in the middle of its write (it is no record of anything)."""
        if not self.enabled:
            return
        f = open_regular(self.path, "Move it away and resume again.")
        if f is None:
            return
        with f:
            lines = f.read().decode(errors="replace").splitlines()
        kept = [x for x in lines if (logged := _logged_step(x)) is not None and logged <= step]
        atomic_write(self.path, lambda out: out.write("".join(f"{x}\n" for x in kept).encode()))

    def write(self, record: dict) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")

    def records(self) -> list:
        return [json.loads(x) for x in self.path.read_text().splitlines()] if self.path.is_file() else []


def _logged_step(line: str):
    """The step of one log line, or None for a line that is not a whole record."""
    try:
        record = json.loads(line)
    except (ValueError, RecursionError):
        return None
    step = record.get("step", 0) if isinstance(record, dict) else None
    return step if isinstance(step, int) and not isinstance(step, bool) else None


@dataclass
class Loop:
    """What a stage plugs into `run`: how to get a batch, compute the loss, and save."""
    batch: Callable  # step -> batch on the device (this rank's slice)
    loss: Callable  # (model, batch) -> (loss, {name: scalar tensor})
    save: Callable  # (step, weights module, last logged metrics) -> None; main process only
    sample: Optional[Callable] = None  # (step, weights module) -> None; main process only
    start: Optional[Callable] = None  # () -> None once the run's state is loaded, before step one; main process only


def model_settings(model) -> dict:
    """The settings that decide the trained module's shapes: a transformer's ModelArgs, a tokenizer's config."""
    return asdict(model.args if hasattr(model, "args") else model.config)


def save_state(path: Path, step: int, model, opt, sched, ema, cfg: TrainConfig) -> None:
    atomic_torch_save({
        "format": STATE_FORMAT, "step": step, "model": model.state_dict(), "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(), "ema": ema.state_dict() if ema is not None else None,
        "data": {"seed": cfg.seed, "batch_size": cfg.batch_size, "position": step * cfg.batch_size},
        "config": asdict(cfg), "model_settings": model_settings(model)}, path)


# what a training-state file holds, and the type of each entry
STATE_TYPES = {"step": int, "model": dict, "optimizer": dict, "scheduler": dict, "data": dict}


def _check_state(path: Path, state) -> None:
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path} is not a dnd training-state file")
    wrong = [k for k, t in STATE_TYPES.items() if not isinstance(state.get(k), t) or isinstance(state.get(k), bool)]
    wrong += [f"data.{k}" for k in ("seed", "batch_size") if "data" not in wrong
              and not isinstance(state["data"].get(k), int)]
    if wrong or state["step"] < 0:
        raise CheckpointError(f"{path}: damaged training-state file ({', '.join(wrong) or 'step'} missing or of the "
                              "wrong type); start the run again without --resume, or in another train.out_dir")


def _check_same_model(path: Path, state: dict, model) -> None:
    """The interrupted run's model settings (stored since they were) must be this config's; a file without them
    is judged by its weights' shapes. Either way the message names what differs, not a state-dict traceback."""
    ours, theirs = model_settings(model), state.get("model_settings")
    if isinstance(theirs, dict):
        differ = [f"{k} {theirs.get(k)!r} there, {v!r} now" for k, v in ours.items() if theirs.get(k) != v]
    else:
        expected = model.state_dict()
        differ = [f"{k} {list(getattr(v, 'shape', []))} there, {list(expected[k].shape)} now"
                  for k, v in state["model"].items() if k in expected and getattr(v, "shape", None) != expected[k].shape]
        differ += [f"{k} missing there" for k in sorted(set(expected) - set(state["model"]))]
    if differ:
        raise CheckpointError(f"--resume: this config's model differs from the interrupted run's ({'; '.join(differ[:6])}"
                              f"{'; ...' if len(differ) > 6 else ''}); resume with the run's own settings (its "
                              f"config.yaml in {path.parent}), or start a new run in another train.out_dir")


def load_state(path: Path, model, opt, sched, ema, cfg: TrainConfig) -> int:
    if not path.is_file():  # claim_run_folder checked it at the start; this is a folder emptied meanwhile
        raise CheckpointError(f"--resume: no training state at {path}; start without --resume or point "
                              "train.out_dir at the interrupted run")
    state = read_torch_file(path)
    _check_state(path, state)
    for key in ("seed", "batch_size"):
        if state["data"][key] != getattr(cfg, key):
            raise CheckpointError(f"--resume: train.{key} is {getattr(cfg, key)} but the interrupted run used "
                                  f"{state['data'][key]}; resuming exactly needs the same value")
    _check_same_model(path, state, model)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:  # the same settings, yet other tensors: a damaged file
        raise CheckpointError(f"{path}: its weights do not load ({str(e).splitlines()[0][:200]}); start the run "
                              "again without --resume, or in another train.out_dir") from None
    try:
        opt.load_state_dict(state["optimizer"])
    except ValueError:  # another set of trainable parameters, e.g. freeze_codes changed
        raise CheckpointError("--resume: the interrupted run trained other parameters than this config does; "
                              "resume with the same config (freeze_codes included)") from None
    sched.load_state_dict(state["scheduler"])
    if ema is not None and state["ema"] is not None:
        ema.load_state_dict(state["ema"])
    elif ema is not None:
        raise CheckpointError("--resume: EMA is on but the interrupted run had no EMA weights; set train.ema_decay=0")
    return int(state["step"])


class Meter:
    """Mean of each metric over the steps since the last log line, averaged over ranks."""

    def __init__(self, step: int):
        self.sums, self.count, self.step, self.elapsed = None, 0, step, 0.0
        self.restart_clock()

    def restart_clock(self):
        self.tick = time.perf_counter()

    def add(self, metrics: dict) -> None:
        self.elapsed += time.perf_counter() - self.tick
        values = torch.stack([v.detach().float().reshape(()) for v in metrics.values()])
        self.names = list(metrics)
        self.sums = values if self.sums is None else self.sums + values
        self.count += 1
        self.restart_clock()

    def flush(self, step: int, d: Dist, **extra) -> dict:
        means = all_mean(self.sums / self.count, d).tolist()
        record = {**dict(zip(self.names, means)), "step": step, **extra,
                  "sec_per_step": self.elapsed / max(1, step - self.step)}
        self.sums, self.count, self.step, self.elapsed = None, 0, step, 0.0
        return record


def _postfix(metrics: dict) -> dict:
    skip = ("step", "lr", "grad_norm", "sec_per_step")
    return {k.replace("loss_", ""): f"{v:.3g}" for k, v in metrics.items() if k not in skip}


def run(cfg: TrainConfig, model: torch.nn.Module, d: Dist, loop: Loop, *, resume: bool = False,
        stop_at: Optional[int] = None) -> torch.nn.Module:
    """Train `model` in place for cfg.steps (or until `stop_at`); returns the weights to ship (EMA if on)."""
    out = Path(cfg.out_dir)
    if d.is_main:
        out.mkdir(parents=True, exist_ok=True)
    model.to(d.device).train()
    torch.manual_seed(cfg.seed)  # same start on every rank (DDP also broadcasts rank 0's weights)
    ddp = wrap(model, d)
    opt = build_optimizer(model, cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, functools.partial(lr_factor, cfg))
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True) \
        if cfg.ema_decay else None
    start = load_state(out / "train_state.pt", model, opt, sched, ema, cfg) if resume else 0
    if loop.start and d.is_main:
        loop.start()  # after the state loaded: a refused resume leaves the run's files as they were
    precision, why = choose_precision(cfg, d.device)
    bf16 = precision == "bf16"
    if d.is_main:
        logger.info("training in %s (%s; --set train.precision=bf16|fp32 overrides)", precision, why)
    log = JsonlLog(out / "log.jsonl", d.is_main)
    if resume:
        log.drop_after(start)
    board = TensorBoardLog(out / "tensorboard", cfg.tensorboard and d.is_main, start)
    weights = lambda: ema.module if ema is not None else model  # noqa: E731
    end = min(cfg.steps, stop_at or cfg.steps)
    bar = tqdm(range(start, end), initial=start, total=cfg.steps, disable=not d.is_main, dynamic_ncols=True)
    meter, record = Meter(start), {}
    for step in bar:
        torch.manual_seed(step_seed(cfg.seed, step, d.rank))  # dropout draws depend on (seed, step, rank) only
        batch = loop.batch(step)
        with torch.autocast(d.device.type, dtype=torch.bfloat16, enabled=bf16):
            loss, metrics = loop.loss(ddp, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()
        if ema is not None:
            ema.update_parameters(model)
        meter.add({"loss": loss, **metrics})
        done = step + 1
        if done % cfg.log_every == 0 or done == end:
            record = meter.flush(done, d, lr=sched.get_last_lr()[0], grad_norm=float(grad_norm))
            if not math.isfinite(record["loss"]):
                raise DndError(f"training diverged: loss is {record['loss']} at step {done}; lower train.lr or "
                               f"raise train.warmup_steps, then restart (or --resume from the last checkpoint)")
            bar.set_postfix(_postfix(record))
            log.write(record)
            board.write(record)
        sampled = loop.sample and d.is_main and cfg.sample_every and (done % cfg.sample_every == 0 or done == cfg.steps)
        if sampled and loop.sample is not None:
            loop.sample(done, weights())
        saved = done % cfg.ckpt_every == 0 or done == end
        if saved:
            if d.is_main:
                loop.save(done, weights(), record)
                save_state(out / "train_state.pt", done, model, opt, sched, ema, cfg)
            barrier(d)
        if d.is_main and (sampled or saved):
            save_loss_plot(log.records(), out / "loss.png")
        meter.restart_clock()  # sec_per_step counts training steps, not sample grids or checkpoints
    bar.close()
    board.close()
    return weights()
