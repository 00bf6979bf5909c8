"""dnd-sdk: train, export and deploy DnD-Transformer image generators.

The source folders `training/`, `export/`, `engines/`, `evaluation/` and `benchmarks/` install
under namespaced import names (`dnd_training`, `dnd_export`, `dnd_engines`, `dnd_eval`,
`dnd_bench`) so that a user's own `training.py` can never shadow them.
"""
from setuptools import setup

setup(
    name="dnd-sdk",
    version="0.1.0",
    description="Train, export and deploy DnD-Transformer image generators",
    python_requires=">=3.10",
    packages=[
        "dnd_sdk", "dnd_sdk.backends", "dnd_sdk.cli", "dnd_sdk.model_folder",
        "dnd_training", "dnd_training.importers", "dnd_export", "dnd_engines", "dnd_eval", "dnd_bench",
    ],
    package_dir={
        "dnd_sdk": "dnd_sdk",
        "dnd_training": "training",
        "dnd_export": "export",
        "dnd_engines": "engines",
        "dnd_eval": "evaluation",
        "dnd_bench": "benchmarks",
    },
    package_data={"dnd_training": ["words.txt"], "dnd_training.importers": ["imagenet_classes.txt"],
                  "dnd_sdk": ["page/*.html", "page/*.css", "page/*.js"]},  # the page of `dnd serve`
    # ONNX Runtime comes from an extra: onnxruntime and onnxruntime-gpu install the same module and
    # must never meet in one environment, so choose exactly one of cpu, gpu and gpu-cu12
    install_requires=["numpy", "pillow", "click>=8", "tqdm"],
    extras_require={
        "cpu": ["onnxruntime"],
        # TensorRT 10 and 11 (the API dnd-build and the backend follow); their plain `tensorrt` wheels
        # are CUDA 13 builds fetched from https://pypi.nvidia.com and need driver r580+ (README).
        # NVRTC compiles the kernel that writes new rows into the KV cache on the GPU (both GPU backends)
        "gpu": ["onnxruntime-gpu", "tensorrt>=10,<12", "cuda-python>=12.6.1", "nvidia-cuda-nvrtc>=13,<14"],
        # the CUDA 12 builds, for drivers r535+; cuda-python 13 would need a CUDA 13 driver
        "gpu-cu12": ["onnxruntime-gpu", "tensorrt-cu12>=10,<12", "cuda-python>=12.6.1,<13", "nvidia-cuda-nvrtc-cu12"],
        "train": ["torch>=2.4", "onnx", "onnxscript", "polygraphy", "pyyaml"],
        "tensorboard": ["tensorboard"],  # train.tensorboard: true; without it a run logs to log.jsonl and loss.png
        "export": ["torch>=2.4", "onnx", "onnxscript", "polygraphy"],
        "eval": ["pytesseract"],
        "ray": ["ray>=2.60,<3"],
        "serve": ["starlette>=0.37", "uvicorn>=0.30", "prometheus_client>=0.20"],
        # linters on one minor release each: a newer one may find new things, so raise these on purpose
        # openai and selenium: the serving tests' real clients (the selenium tests drive Debian's chromium)
        "dev": ["pytest", "hypothesis", "httpx", "ruff>=0.17.6,<0.18", "mypy>=2.4.1,<2.5", "openai", "selenium>=4"],
    },
    entry_points={
        "console_scripts": [
            "dnd=dnd_sdk.cli.main:main",
            "dnd-export=dnd_export.cli:main",
            "dnd-build=dnd_engines.cli:main",
        ]
    },
)
