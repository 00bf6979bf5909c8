"""dnd_sdk: a torch-free runtime for exported DnD-Transformer image generators.

    from dnd_sdk import Generator
    images = Generator("model_dir").sample(labels=["ocean", 3], seed=0)
"""
from .errors import DndError
from .generator import Generator
from .sampler import SamplingParams

__version__ = "0.1.0"
__all__ = ["Generator", "DndError", "SamplingParams", "__version__"]
