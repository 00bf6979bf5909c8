"""Option groups shared by commands. Each collapses its options into the keyword arguments the
Python API takes (`sampling` for Generator.sample, `backend` for Generator), so CLI and API cannot drift."""
import functools
from collections.abc import Callable
from dataclasses import fields
from typing import Any, Optional

import click

from ..backends import BACKEND_CHOICES
from ..sampler import SamplingParams, Setting, setting_of

# The sampler's settings on a command line come from SamplingParams' fields: SamplingParams field -> its Setting
SETTINGS = {f.name: setting_of(f) for f in fields(SamplingParams)}


def flag(name: str) -> str:
    """The command-line flag of a setting: top_k -> --top-k."""
    return "--" + name.replace("_", "-")


def _stack(*decorators: Callable) -> Callable:
    def apply(f: Callable) -> Callable:
        for d in reversed(decorators):
            f = d(f)
        return f
    return apply


def sampler_options(f: Optional[Callable] = None, *, seed: bool = True, seed_default: int = 0,
                    unset: str = "the model's", per_head: bool = True) -> Callable:
    """The sampler settings -> `sampling` (a SamplingParams of the ones given; the rest take the model's
    defaults), and with seed=True `--seed` -> `seed`. `unset` says in --help what an absent setting means.
    per_head adds the settings a model stores no default for, such as `--head-temperatures` (a request's)."""
    def decorate(f: Callable) -> Callable:
        names = [name for name, s in SETTINGS.items() if s.stored or per_head]
        options = [_option(name, SETTINGS[name], unset) for name in names]
        if seed:
            options.insert(0, click.option("--seed", type=int, default=seed_default, show_default=True,
                                           help="Request seed; image i depends on (seed, i) only."))

        @_stack(*options)
        @functools.wraps(f)
        def wrapper(**kwargs: Any) -> Any:
            return f(sampling=SamplingParams(**{name: kwargs.pop(name) for name in names}), **kwargs)
        return wrapper
    return decorate if f is None else decorate(f)


def _option(name: str, setting: Setting, unset: str) -> Callable:
    text = f"{setting.help} [default: {setting.unset or unset}]"
    if setting.kind is tuple:  # a list of numbers, such as one per depth head
        return click.option(flag(name), callback=_numbers, metavar="X0,X1,...", help=text)
    return click.option(flag(name), type=setting.kind, help=text)


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
        return _stack(*(click.option(flag(k), f"{k}s", type=SETTINGS[k].kind, multiple=True, default=v,
                                     show_default=True, help=f"{SETTINGS[k].help} Values to try (repeatable).")
                        for k, v in values.items()))(f)
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
