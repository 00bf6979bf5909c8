"""dnd-sdk: train, export and deploy DnD-Transformer image generators.

The source folders `training/`, `export/` and `engines/` install under namespaced
import names (`dnd_training`, `dnd_export`, `dnd_engines`) so that a user's own
`training.py` can never shadow them.
"""
from setuptools import setup

setup(
    name="dnd-sdk",
    version="0.1.0",
    description="Train, export and deploy DnD-Transformer image generators",
    python_requires=">=3.10",
    packages=[
        "dnd_sdk", "dnd_sdk.backends", "dnd_sdk.cli",
        "dnd_training", "dnd_training.importers", "dnd_export", "dnd_engines",
    ],
    package_dir={
        "dnd_sdk": "dnd_sdk",
        "dnd_training": "training",
        "dnd_export": "export",
        "dnd_engines": "engines",
    },
    package_data={"dnd_training": ["words.txt"], "dnd_training.importers": ["imagenet_classes.txt"]},
    install_requires=["numpy", "pillow", "click>=8", "onnxruntime", "tqdm"],
    extras_require={
        "train": ["torch>=2.4", "onnx", "onnxscript", "polygraphy", "pyyaml"],
        "export": ["torch>=2.4", "onnx", "onnxscript", "polygraphy"],
        "gpu": ["onnxruntime-gpu", "tensorrt", "polygraphy"],
        "eval": ["pytesseract"],
        "dev": ["pytest", "hypothesis"],
    },
    entry_points={
        "console_scripts": [
            "dnd=dnd_sdk.cli.main:main",
            "dnd-export=dnd_export.cli:main",
            "dnd-build=dnd_engines.cli:main",
        ]
    },
)
