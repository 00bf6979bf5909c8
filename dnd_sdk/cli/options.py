"""Option groups shared by commands. Each collapses its options into the keyword arguments the
Python API takes (`sampling` for Generator.sample, `backend` for Generator), so CLI and API cannot drift."""
import functools
from collections.abc import Callable
from typing import Any, Optional

import click

from ..backends import BACKEND_CHOICES
from ..model_folder.schema import SAMPLER_KEYS

# The sampler's settings on a command line, declared once for every command that samples or stores them:
# SamplingParams field -> (flag, type, what it does)
SAMPLER_FLAGS = {
    "cfg_scale": ("--cfg-scale", float, "Guidance scale; 1 turns guidance off."),
    "temperature": ("--temperature", float, "0 is greedy."),
    "top_k": ("--top-k", int, "Keep the k most likely tokens; 0 keeps all."),
    "top_p": ("--top-p", float, "Nucleus mass in (0, 1]; 1 keeps all."),
}
assert tuple(SAMPLER_FLAGS) == SAMPLER_KEYS


def _stack(*decorators: Callable) -> Callable:
    def apply(f: Callable) -> Callable:
        for d in reversed(decorators):
            f = d(f)
        return f
    return apply


def sampler_options(f: Optional[Callable] = None, *, seed: bool = True, seed_default: int = 0,
                    unset: str = "the model's", per_head: bool = True) -> Callable:
    """The sampler settings -> `sampling` (dict of the ones given; the rest take the model's defaults),
    and with seed=True `--seed` -> `seed`. `unset` says in --help what an absent setting means.
    per_head adds `--head-temperatures` (a request's setting; a model stores no default for it)."""
    def decorate(f: Callable) -> Callable:
        options = [click.option(flag, type=kind, help=f"{text} [default: {unset}]")
                   for flag, kind, text in SAMPLER_FLAGS.values()]
        if per_head:
            options.append(click.option("--head-temperatures", callback=_numbers, metavar="T0,T1,...",
                                        help="One temperature per depth head, in head order; overrides "
                                             "--temperature. [default: --temperature for every head]"))
        if seed:
            options.insert(0, click.option("--seed", type=int, default=seed_default, show_default=True,
                                           help="Request seed; image i depends on (seed, i) only."))

        @_stack(*options)
        @functools.wraps(f)
        def wrapper(**kwargs: Any) -> Any:
            given = {k: kwargs.pop(k) for k in (*SAMPLER_KEYS, *(["head_temperatures"] if per_head else []))}
            return f(sampling={k: v for k, v in given.items() if v is not None}, **kwargs)
        return wrapper
    return decorate if f is None else decorate(f)


def _numbers(ctx: click.Context, param: click.Parameter, value: Optional[str]) -> Optional[tuple]:
    """"0.5,1,1" -> (0.5, 1.0, 1.0); how many a model takes is checked with the model."""
    if value is None:
        return None
    try:
        return tuple(float(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of numbers, e.g. 0.5,1.0") from None


def sampler_grid_options(**values: tuple) -> Callable:
    """Several values of some sampler settings, e.g. sampler_grid_options(cfg_scale=(1.0, 2.0)) ->
    `cfg_scales` (tuple; the flag is repeatable, `values` its default)."""
    def decorate(f: Callable) -> Callable:
        return _stack(*(click.option(SAMPLER_FLAGS[k][0], f"{k}s", type=SAMPLER_FLAGS[k][1], multiple=True,
                                     default=v, show_default=True, help=f"{SAMPLER_FLAGS[k][2]} Values to try "
                                     "(repeatable).") for k, v in values.items()))(f)
    return decorate


def backend_options(f: Callable) -> Callable:
    """Backend: which engine runs the graphs -> `backend` dict for Generator(path, **backend)."""
    @_stack(
        click.option("--backend", type=click.Choice(BACKEND_CHOICES), default="auto", show_default=True,
                     help="auto tries TensorRT, then ONNX Runtime CUDA, then ONNX Runtime CPU."),
        click.option("--threads", type=click.IntRange(min=1), help="CPU threads per ONNX Runtime session. [default: all cores]"),
    )
    @functools.wraps(f)
    def wrapper(**kwargs: Any) -> Any:
        return f(backend={"backend": kwargs.pop("backend"), "threads": kwargs.pop("threads")}, **kwargs)
    return wrapper


def ray_options(f: Callable) -> Callable:
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
    def wrapper(**kwargs: Any) -> Any:
        address = kwargs.pop("address")
        given = {k: v for k in ("workers", "worker_gpus", "worker_cpus") if (v := kwargs.pop(k)) is not None}
        if address is None and given:
            raise click.UsageError(f"--{next(iter(given)).replace('_', '-')} needs --ray")
        return f(ray=None if address is None else {"address": address, **given}, **kwargs)
    return wrapper
