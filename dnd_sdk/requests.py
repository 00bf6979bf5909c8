"""A sampling request resolved from a model's manifest alone: labels become class ids, image indices are
fixed, and the settings are filled from the model's defaults and checked.

    model = ModelFacts.of(load_manifest("model_dir", verify=False))
    req = resolve_request(model, ["ocean", 3], seed=0, sampling=SamplingParams(cfg_scale=2.0))

Pure: no backend, no Generator. `Generator.request`, `dnd serve`, `dnd generate` and the Ray driver all
resolve a request here, so a plan needs no loaded model. What only a live backend knows, the rows one
call holds, is checked by `Generator.fit`.
"""
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from .arguments import MAX_IMAGES, MAX_INDEX, as_int, integer, integers, shown
from .errors import InvalidInputError, arg
from .model_folder.manifest import Manifest
from .sampler import ModelLimits, SamplingParams, as_sampling

QUOTE = "'"  # around a string's repr: a class id given as digits is shown without it


@dataclass(frozen=True)
class Request:
    """A validated sampling request: image j has class `labels[j]` and draws its randomness as image `indices[j]`."""
    labels: np.ndarray   # [n] int64 class ids
    indices: np.ndarray  # [n] int64 image indices for the seeding rule
    seed: int
    params: SamplingParams  # every setting resolved and checked
    batch_size: Optional[int]  # images per backend call; None: as many as a call holds (Generator.fit sets it)


@dataclass(frozen=True)
class ModelFacts:
    """What resolving a request needs to know of a model, read once from its manifest."""
    labels: tuple[str, ...]
    label_ids: Mapping[str, int]
    defaults: SamplingParams  # the model's sampler defaults, every setting set
    limits: ModelLimits

    @classmethod
    def of(cls, manifest: Manifest) -> "ModelFacts":
        labels = tuple(str(x) for x in manifest.labels)
        limits = ModelLimits(int(manifest.model_config["vocab_size"]), manifest.depth, manifest.null_class is not None)
        return cls(labels, {name: i for i, name in enumerate(labels)},
                   SamplingParams.from_stored(manifest.sampler_defaults), limits)

    @property
    def num_classes(self) -> int:
        return len(self.labels)


def chosen_sampling(sampling: Any, settings: Mapping[str, Any]) -> SamplingParams:
    """The settings of a call: `sampling` (a SamplingParams) or the single `settings` given as keywords."""
    if sampling is None:
        return SamplingParams(**settings)
    if settings:
        raise InvalidInputError(f"give {arg('sampling')} (a SamplingParams) or single settings such as cfg_scale=2, "
                                "not both")
    return as_sampling(sampling)


def resolve_request(model: ModelFacts, labels: Any = None, num: Any = None, *, seed: Any = 0,
                    sampling: Optional[SamplingParams] = None, image_indices: Any = None, start: Any = 0,
                    batch_size: Any = None) -> Request:
    """Validate a sampling request before any work; arguments as in `Generator.sample`. Settings that
    `sampling` leaves unset take the model's defaults.

    Raises:
        InvalidInputError: naming the first bad argument and what to pass instead.
    """
    given = None if labels is None else _given_labels(model, labels)
    indices = _indices(model, given, num, image_indices, start)
    # no labels: image index i gets class i % num_classes; else image j gets given[j % len(given)]
    if given is None:
        ids = indices % model.num_classes
    else:
        ids = np.array([given[j % len(given)] for j in range(len(indices))])
    limits = model.limits
    params = as_sampling(SamplingParams() if sampling is None else sampling).with_defaults(model.defaults)
    params = params.validate(limits.vocab_size, limits.depth, limits.has_null_class)
    batch = None if batch_size is None else integer(batch_size, "batch_size", 1, MAX_IMAGES)
    return Request(ids.astype(np.int64), indices.astype(np.int64), integer(seed, "seed"), params, batch)


def _class_id(model: ModelFacts, label: Any) -> int:
    if isinstance(label, str) and label in model.label_ids:
        return model.label_ids[label]
    last = model.num_classes - 1
    if isinstance(label, str) and not label.strip().isdecimal():
        known = ", ".join(model.labels[:8]) + (", ..." if model.num_classes > 8 else "")
        raise InvalidInputError(f"unknown label {shown(label)}; this model knows {model.num_classes} labels "
                                f"({known}) or class ids 0..{last}", ["labels"])
    class_id = as_int(label, 0, last, digits=True)  # a string of digits is a class id
    if class_id is None:
        is_int = isinstance(label, str) or as_int(label, -math.inf, math.inf) is not None  # of any size
        wrong = (f"class id {shown(label).strip(QUOTE)} is out of range" if is_int
                 else f"each of {arg('labels')} is a class name or an int class id, got {shown(label)}")
        raise InvalidInputError(f"{wrong}; this model has classes 0..{last}", ["labels"])
    return class_id


def _given_labels(model: ModelFacts, labels: Any) -> list:
    if isinstance(labels, (str, int, np.integer)):
        given = [labels]
    elif isinstance(labels, (list, tuple, range, np.ndarray)):
        given = list(np.asarray(labels).ravel()) if isinstance(labels, np.ndarray) else list(labels)
    else:
        raise InvalidInputError(f"{arg('labels')} must be a class name, an int class id or a list of them, "
                                f"got {shown(labels)}")
    if not given or len(given) > MAX_IMAGES:
        raise InvalidInputError(f"{arg('labels')} must hold 1..{MAX_IMAGES:,} class names or ids, got "
                                f"{len(given)}; or pass None")
    return [_class_id(model, x) for x in given]


def _indices(model: ModelFacts, given: Optional[list], num: Any, image_indices: Any, start: Any) -> np.ndarray:
    if image_indices is not None:
        if start is not None and as_int(start) != 0:  # any start but the default
            raise InvalidInputError(f"give {arg('image_indices')} or {arg('start')}, not both")
        indices = integers(image_indices, "image_indices")
        if num is not None and len(indices) != integer(num, "num", 1, MAX_IMAGES):
            raise InvalidInputError(f"{arg('num')}={num} but {len(indices)} {arg('image_indices')} were given")
        return indices
    if num is None:
        num = model.num_classes if given is None else len(given)  # default: one image per class or label
    num = integer(num, "num", 1, MAX_IMAGES)
    return np.arange(num, dtype=np.int64) + integer(start, "start", 0, MAX_INDEX - num)
