"""The body of `POST /v1/images` (`dnd_sdk.serve`): its keys, typed apart from the Python API.

    {"labels": ["ocean"], "num": 2, "seed": 0, "cfg_scale": 2.0, ...}

The keys are this module's: the request's own (`ImagesRequest`'s fields but `sampling`) and the sampler's
settings (`SamplingParams`' fields), at the top level of the object. A Python argument renamed elsewhere
does not rename a key. The values are checked where the Python API checks them (`dnd_sdk.requests`), so
a bad value gets the message a Python caller gets.
"""
from dataclasses import dataclass, fields
from typing import Any

from .arguments import shown
from .errors import InvalidInputError
from .sampler import SETTINGS, SamplingParams


@dataclass(frozen=True)
class ImagesRequest:
    """A parsed body: each value as the client sent it; a key it leaves out takes its default here."""
    labels: Any = None
    num: Any = None
    seed: Any = 0
    start: Any = 0
    image_indices: Any = None
    sampling: SamplingParams = SamplingParams()  # from the body's setting keys; unset ones take the model's defaults

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        """Every key a body may hold."""
        return (*(f.name for f in fields(cls) if f.name != "sampling"), *SETTINGS)

    @classmethod
    def from_json(cls, body: Any) -> "ImagesRequest":
        """The request of a parsed JSON body; InvalidInputError unless it is an object of known keys."""
        keys = cls.keys()
        if not isinstance(body, dict) or set(body) - set(keys):
            unknown = sorted(set(body) - set(keys)) if isinstance(body, dict) else body
            raise InvalidInputError(f"the body must be a JSON object of {', '.join(keys)}; got {shown(unknown)}")
        settings = {k: v for k, v in body.items() if k in SETTINGS}
        own = {k: v for k, v in body.items() if k not in SETTINGS}
        return cls(**own, sampling=SamplingParams(**settings))
