"""`dnd generate --ray`: the batch job of `dnd_sdk.batch` spread over Ray actors, one Generator each.

    summary = run_batch_ray("model_dir", "samples/", BatchJob(num=50_000, npz=True),
                            RayOptions(address="auto", workers=8, worker_gpus=1))

The driver (this process) runs the steps of `batch.run_batch` itself except sampling: it plans the
run from the manifest alone (while the workers load the model), claims the folder, lists the indices without a PNG, hands chunks of them
to the workers and writes every chunk that comes back with `batch.write_chunk`. So the folder is,
byte for byte, what one process writes; workers need no shared filesystem; and a killed driver
resumes like a killed `dnd generate`. A worker that dies has its chunks queued again and is
replaced. ray is imported only when a run starts, so `import dnd_sdk` never loads it.
"""
import logging
import os
import socket
import tempfile
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .arguments import integer
from .batch import (
    BatchJob,
    BatchSummary,
    RunPlan,
    check_out_folder,
    finish_run,
    open_run,
    plan_run,
    run_progress,
    sample_chunk,
    write_chunk,
)
from .errors import ClusterError, DndError, InvalidInputError, arg
from .generator import Generator
from .images import to_pil
from .model_folder.hashing import sha256_bytes
from .model_folder.manifest import MANIFEST_NAME, load_manifest

IN_FLIGHT = 2          # chunks queued per worker, so that it samples the next while the driver writes the last
RESTARTS = 3           # replacements per worker before the run goes on without it
CONNECT_TIMEOUT_S = 5  # ray.init takes about 40 s to give up on an address that does not answer


@dataclass
class RayOptions:
    """Where a Ray run goes and how wide it is.

    address: "local" starts a private cluster on this machine, stopped at the end; "auto" joins the
        cluster `ray start` made on this machine (or RAY_ADDRESS); HOST:PORT joins the cluster whose
        head node's GCS listens there (ray:// client addresses work too).
    workers: worker actors, each holding one Generator.
    worker_cpus, worker_gpus: Ray resources of each worker (worker_gpus=1: a GPU each; 0.5: two per GPU).
    backend, threads: as for Generator; threads defaults to worker_cpus (ONNX Runtime would take every core).
    ship_model: send the model folder through Ray's object store even to workers that see its path.
    """
    address: str = "local"
    workers: int = 1
    worker_cpus: float = 1.0
    worker_gpus: float = 0.0
    backend: str = "auto"
    threads: Optional[int] = None
    ship_model: bool = False


@dataclass
class WorkerStats:
    name: str      # the actor's name, as `ray list actors` shows it
    node: str      # IP address of its node
    backend: str
    images: int = 0
    seconds: float = 0.0  # spent sampling

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0


@dataclass
class RayBatchSummary(BatchSummary):
    workers: list            # WorkerStats of every worker that loaded the model, replacements included
    lost: int                # workers that died during the run; others made their chunks again
    sampling_seconds: float  # from the first chunk handed out to the last one written


def run_batch_ray(model: str | Path, out: str | Path, job: BatchJob, options: Optional[RayOptions] = None,
                  progress: bool = True,
                  on_chunk: Optional[Callable[[WorkerStats, int, int], None]] = None) -> RayBatchSummary:
    """`batch.run_batch` with the sampling done by Ray workers; same files, same resume rules.

    Args:
        model (str | Path): the model folder, as the driver sees it. Workers that see the same
            manifest.json at the same path open it there; the others get its files through
            Ray's object store. Every worker checks every file's sha256 before sampling.
        out (str | Path): output folder, written by this process only.
        job (BatchJob): what to generate.
        options (RayOptions): cluster and workers; default one worker on a private local cluster.
            If this process is already connected to Ray (ray.init), that connection is used and left open.
        progress (bool): one tqdm bar for the whole run.
        on_chunk: called as on_chunk(worker, images done, images of this shard) after each chunk is
            written, `worker` the WorkerStats of the worker that made it.

    Raises:
        ClusterError: ray missing, cluster unreachable or too small for the workers, every worker dead.
        InvalidInputError, OutputError, ManifestError, BackendUnavailableError: as run_batch and Generator.
    """
    t0, model, out = time.perf_counter(), Path(model), Path(out)
    options = options or RayOptions()
    _check(options)
    # a missing or foreign folder, or a bad job, is reported before any cluster starts
    plan = plan_run(load_manifest(model, verify=False), job)
    check_out_folder(out, model)
    ray = _import_ray(options.address)
    connected = _connect(ray, options.address)
    pool = None
    try:
        _check_room(ray, options)
        pool = _Pool(ray, model, options)
        mine = plan.mine
        with open_run(out, plan) as todo:
            queue = deque(todo[lo:lo + job.batch_size] for lo in range(0, len(todo), job.batch_size))
            plan_ref, t1 = ray.put(plan), time.perf_counter()
            with run_progress(out, mine, todo, progress) as bar:
                while queue or pool.chunks_in_flight():
                    pool.feed(queue, plan_ref)
                    done = pool.next_chunk(queue)
                    if done is not None:
                        worker, chunk, images = done
                        bar.begin(chunk)
                        write_chunk(out, plan, chunk, to_pil(images))
                        bar.update(len(chunk))
                        if on_chunk is not None:
                            on_chunk(worker, bar.done(), len(mine))
            sampling_seconds = time.perf_counter() - t1
            complete = finish_run(out, plan, job)
        pool.close()
        return RayBatchSummary(out, len(todo), len(mine) - len(todo), complete, time.perf_counter() - t0,
                               pool.stats, pool.lost, sampling_seconds)
    finally:
        if pool is not None:
            pool.kill()
        if connected:
            ray.shutdown()


def _check(o: RayOptions) -> None:
    integer(o.workers, "workers", 1)
    if not o.worker_cpus > 0 or not o.worker_gpus >= 0:
        raise InvalidInputError(f"{arg('worker_cpus')} must be > 0 and {arg('worker_gpus')} >= 0, got "
                                f"{o.worker_cpus!r} and {o.worker_gpus!r}")


# The private cluster of `--ray local`, set before ray is imported:
PRIVATE_CLUSTER = {
    # Ray swaps a loopback node address for the machine's network IP, and binds its servers there, unless
    # this flag is off (ray._private.services.get_node_ip_address reads it when ray is imported)
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    # token authentication, which Ray turns on by default for a new local cluster with a warning on every run
    # ("Token authentication is enabled for this Ray cluster"); said explicitly, it stays on and Ray is quiet
    "RAY_AUTH_MODE": "token",
}


def _import_ray(address: str) -> Any:
    if address == "local":  # a private cluster of this machine alone listens on 127.0.0.1 only
        for key, value in PRIVATE_CLUSTER.items():
            os.environ.setdefault(key, value)
    try:
        import ray
    except ImportError as e:
        raise ClusterError(f"a Ray run needs ray: pip install 'dnd-sdk[ray]' ({e})") from None
    return ray


def _connect(ray: Any, address: str) -> bool:
    """Connect this process to the cluster; True when this call did (and the run disconnects at the end)."""
    if ray.is_initialized():
        return False
    if address not in ("local", "auto") and "://" not in address:
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise ClusterError(f"{arg('address')} must be local, auto, HOST:PORT or ray://HOST:PORT, "
                               f"got {address!r}")
        try:
            socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
        except OSError as e:
            raise ClusterError(f"no Ray cluster answers at {address!r} ({e}); give HOST:PORT of the head node's "
                               "GCS (`ray status` on it shows it), `auto`, or `local`") from None
    if address == "local":
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # a private, throwaway cluster reports nothing
    try:
        # worker output stays in Ray's log files: one progress bar, not interleaved worker lines
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING,
                 **({"include_dashboard": False} if address == "local" else {}))
    except ConnectionError as e:
        if address == "auto":  # Ray's own message names a --address flag, which is `ray start`'s, not ours
            raise ClusterError(f"no Ray cluster runs on this machine for {arg('address')} auto (`ray start --head` "
                               f"starts one; RAY_ADDRESS names another). Give {arg('address')} HOST:PORT of a head "
                               f"node, or {arg('address')} local for a private cluster of this machine") from None
        raise ClusterError(f"cannot join a Ray cluster at {address!r}: {e}") from None
    return True


def _check_room(ray: Any, o: RayOptions) -> None:
    """Refuse workers the cluster can never place: Ray would wait for them forever."""
    total = ray.cluster_resources()
    for key, each in (("CPU", o.worker_cpus), ("GPU", o.worker_gpus)):
        if o.workers * each > total.get(key, 0) + 1e-9:
            raise ClusterError(f"{o.workers} worker(s) of {each:g} {key} each need {o.workers * each:g} {key}s but the "
                               f"cluster has {total.get(key, 0):g}; lower workers or worker_{key.lower()}s",
                               ["workers", f"worker_{key.lower()}s"])


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


class _Worker:
    """One Generator in a Ray actor (made a Ray actor class at run time, so this module imports without ray)."""

    gen: Any  # its Generator, once load() ran
    _copy: Optional[tempfile.TemporaryDirectory]

    def __init__(self) -> None:
        self.gen, self._copy = None, None

    def load(self, path: str | Path, manifest_sha256: str, files: Optional[dict], backend: str,
             threads: int) -> Optional[dict]:
        """Open the model at `path` if this node has the same manifest.json there, else write `files`
        (name -> ObjectRef of its bytes) to a temporary folder and open that. Returns None when the
        path does not hold the model and no files were given; else where this worker runs."""
        import ray
        if files is None:
            manifest = Path(path) / MANIFEST_NAME
            if not manifest.is_file() or sha256_bytes(manifest.read_bytes()) != manifest_sha256:
                return None
        else:
            self._copy = tempfile.TemporaryDirectory(prefix="dnd-model-")
            path = Path(self._copy.name)
            for name, ref in files.items():
                (path / name).parent.mkdir(parents=True, exist_ok=True)
                (path / name).write_bytes(ray.get(ref))
        self.gen = Generator(path, backend, threads=threads)  # checks every file against its sha256
        return {"node": ray.util.get_node_ip_address(), "backend": self.gen.backend_name}

    def sample(self, plan: RunPlan, chunk: list) -> tuple[np.ndarray, float]:
        t0 = time.perf_counter()
        images = sample_chunk(self.gen, plan, chunk)
        return np.stack([np.asarray(im) for im in images]), time.perf_counter() - t0

    def close(self) -> None:
        self.gen.close()
        if self._copy is not None:
            self._copy.cleanup()


@dataclass(eq=False)
class _Actor:
    handle: Any  # its Ray actor
    name: str
    slot: int
    stats: Optional[WorkerStats] = None  # set once the model is loaded
    in_flight: int = 0
    alive: bool = True


class _Pool:
    """The workers of one run: starts them, hands out chunks, replaces the ones that die."""
    files: Optional[dict]
    slots: list  # the current _Actor of each slot
    stats: list[WorkerStats]

    def __init__(self, ray: Any, model: Path, options: RayOptions) -> None:
        self.ray, self.model, self.options = ray, model.resolve(), options
        self.manifest_sha256 = sha256_bytes((model / MANIFEST_NAME).read_bytes())
        self.files = None  # name -> ObjectRef, put the first time a worker needs them
        self.remote = ray.remote(num_cpus=options.worker_cpus, num_gpus=options.worker_gpus, max_restarts=0)(_Worker)
        self.run_id = uuid.uuid4().hex[:8]
        self.slots, self.restarts = [None] * options.workers, [0] * options.workers  # current _Actor per slot
        self.pending: dict = {}  # ObjectRef -> (_Actor, chunk; None for a load)
        self.stats, self.lost = [], 0
        for slot in range(options.workers):
            self._start(slot)

    def _start(self, slot: int) -> None:
        name = f"dnd-generate-{self.run_id}-w{slot}" + (f"r{self.restarts[slot]}" if self.restarts[slot] else "")
        self.slots[slot] = actor = _Actor(self.remote.options(name=name).remote(), name, slot)
        self._load(actor, self.options.ship_model)

    def _load(self, actor: _Actor, ship: bool) -> None:
        o = self.options
        if ship and self.files is None:
            self.files = {p.relative_to(self.model).as_posix(): self.ray.put(p.read_bytes())
                          for p in sorted(self.model.rglob("*")) if p.is_file()}
        ref = actor.handle.load.remote(str(self.model), self.manifest_sha256, self.files if ship else None,
                                       o.backend, o.threads or max(1, int(o.worker_cpus)))
        self.pending[ref] = (actor, None)

    def _get(self, ref: Any) -> Any:
        try:
            return self.ray.get(ref)
        except self.ray.exceptions.RayTaskError as e:
            if isinstance(e.cause, DndError):  # a user error raised on the worker: its message, as locally
                raise e.cause from None
            raise

    def chunks_in_flight(self) -> bool:
        return any(chunk is not None for _, chunk in self.pending.values())

    def feed(self, queue: deque, plan_ref: Any) -> None:
        for actor in self.slots:
            while actor.alive and actor.stats is not None and actor.in_flight < IN_FLIGHT and queue:
                chunk = queue.popleft()
                self.pending[actor.handle.sample.remote(plan_ref, chunk)] = (actor, chunk)
                actor.in_flight += 1

    def next_chunk(self, queue: deque) -> Optional[tuple]:
        """Wait for the next call to finish: (WorkerStats, chunk, images uint8 [n, H, W, 3]) for a sampled chunk,
        None for anything else (a worker loaded, or died and had its chunk put back in `queue`)."""
        [ref], _ = self.ray.wait(list(self.pending), num_returns=1)
        actor, chunk = self.pending.pop(ref)
        if chunk is not None:
            actor.in_flight -= 1
        try:
            result = self._get(ref)
        except (self.ray.exceptions.RayActorError, self.ray.exceptions.ObjectLostError) as e:
            if chunk is not None:
                queue.appendleft(chunk)
            self._replace(actor, e)
            return None
        if chunk is None:
            if result is None:  # this worker's node does not see the model's path
                self._load(actor, ship=True)
            else:
                actor.stats = WorkerStats(actor.name, **result)
                self.stats.append(actor.stats)
            return None
        images, seconds = result
        actor.stats.images += len(chunk)
        actor.stats.seconds += seconds
        return actor.stats, chunk, images

    def _replace(self, actor: _Actor, error: Exception) -> None:
        if not actor.alive:  # its other calls fail as well; it was replaced at the first
            return
        actor.alive, self.lost = False, self.lost + 1
        self.ray.kill(actor.handle)  # a lost result can come from a live worker: free its resources all the same
        if self.restarts[actor.slot] < RESTARTS:
            self.restarts[actor.slot] += 1
            self._start(actor.slot)
        elif not any(a.alive for a in self.slots):
            raise ClusterError(f"every worker died, {RESTARTS} times each; the last: {_first_line(error)} "
                               "(the Ray logs of its node hold the rest)")

    def close(self) -> None:
        """Let every worker close its model and delete its copy of the folder."""
        try:
            self.ray.get([a.handle.close.remote() for a in self.slots if a.alive and a.stats is not None])
        except self.ray.exceptions.RayError:  # a worker that dies now has nothing left to lose
            pass

    def kill(self) -> None:
        for actor in self.slots:
            if actor.alive:
                self.ray.kill(actor.handle)
                actor.alive = False
