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
