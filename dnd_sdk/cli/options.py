"""Option groups shared by commands. Each collapses its options into the keyword arguments the
Python API takes (`sampling` for Generator.sample, `backend` for Generator), so CLI and API cannot drift."""
import functools

import click

from ..backends import BACKEND_CHOICES

SAMPLING_KEYS = ("cfg_scale", "temperature", "top_k", "top_p")


def _stack(*decorators):
    def apply(f):
        for d in reversed(decorators):
            f = d(f)
        return f
    return apply


def sampling_options(f):
    """Sampling: seed and the sampler settings -> `seed` and `sampling` (dict of the ones given)."""
    @_stack(
        click.option("--seed", type=int, default=0, show_default=True, help="Request seed; image i depends on (seed, i) only."),
        click.option("--cfg-scale", type=float, help="Guidance scale; 1 turns guidance off. [default: the model's]"),
        click.option("--temperature", type=float, help="0 is greedy. [default: the model's]"),
        click.option("--top-k", type=int, help="Keep the k most likely tokens; 0 keeps all. [default: the model's]"),
        click.option("--top-p", type=float, help="Nucleus mass in (0, 1]; 1 keeps all. [default: the model's]"),
    )
    @functools.wraps(f)
    def wrapper(**kwargs):
        given = {k: kwargs.pop(k) for k in SAMPLING_KEYS}
        return f(sampling={k: v for k, v in given.items() if v is not None}, **kwargs)
    return wrapper


def backend_options(f):
    """Backend: which engine runs the graphs -> `backend` dict for Generator(path, **backend)."""
    @_stack(
        click.option("--backend", type=click.Choice(BACKEND_CHOICES), default="auto", show_default=True,
                     help="auto tries TensorRT, then ONNX Runtime CUDA, then ONNX Runtime CPU."),
        click.option("--threads", type=click.IntRange(min=1), help="CPU threads per ONNX Runtime session. [default: all cores]"),
    )
    @functools.wraps(f)
    def wrapper(**kwargs):
        return f(backend={"backend": kwargs.pop("backend"), "threads": kwargs.pop("threads")}, **kwargs)
    return wrapper


def ray_options(f):
    """Ray: spread a run over a cluster -> `ray` dict of RayOptions fields, or None without --ray."""
    @_stack(
        click.option("--ray", "address", is_flag=False, flag_value="local", metavar="[local|auto|ADDRESS]",
                     help="Sample on Ray workers: `--ray` or `--ray local` starts a private cluster on this machine; "
                          "`auto` or HOST:PORT joins a running one. Needs pip install 'dnd-sdk[ray]'."),
        click.option("--workers", type=click.IntRange(min=1), help="Ray workers, one Generator each. [default: 1]"),
        click.option("--worker-gpus", type=click.FloatRange(min=0), help="GPUs per Ray worker. [default: 0]"),
        click.option("--worker-cpus", type=click.FloatRange(min=0, min_open=True),
                     help="CPUs per Ray worker; also its ONNX Runtime threads unless --threads. [default: 1]"),
    )
    @functools.wraps(f)
    def wrapper(**kwargs):
        address = kwargs.pop("address")
        given = {k: v for k in ("workers", "worker_gpus", "worker_cpus") if (v := kwargs.pop(k)) is not None}
        if address is None and given:
            raise click.UsageError(f"--{next(iter(given)).replace('_', '-')} needs --ray")
        return f(ray=None if address is None else {"address": address, **given}, **kwargs)
    return wrapper
