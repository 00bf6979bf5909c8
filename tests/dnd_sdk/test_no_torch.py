"""`import dnd_sdk`, a whole sample() and `dnd --help` never import torch (or the other dnd packages)."""
import subprocess
import sys

SCRIPT = r"""
import sys
sys.modules["torch"] = None  # any `import torch` now raises ImportError
import dnd_sdk
from dnd_sdk.cli.main import main
try:
    main(["--help"])
except SystemExit as e:
    assert e.code == 0, e.code
images = dnd_sdk.Generator(sys.argv[1], threads=1).sample(labels=["cat", 2], seed=0, cfg_scale=2.0)
assert len(images) == 2 and images[0].size == (32, 16)
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("dnd_training", "dnd_export", "dnd_engines", "dnd_eval",
                                                           "dnd_bench", "onnx"))
assert not heavy, heavy
print("TORCH-FREE OK")
"""


def test_sampling_runs_without_torch(tiny_model_dir):
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tiny_model_dir)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "TORCH-FREE OK" in proc.stdout and "generate" in proc.stdout
