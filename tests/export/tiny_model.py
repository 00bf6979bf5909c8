"""The suite's tiny model, and the exported folder of it committed as tests/data/tiny-model.

The runtime's tests (tests/dnd_sdk) run on the committed folder, so they need no torch; the export tests
export the same recipe afresh. tests/export/test_tiny_model_data.py fails when the committed folder no longer
matches what the exporter writes; then write it again (a few seconds) and commit the result:

    .venv/bin/python tests/export/tiny_model.py

Importing this module needs no torch: only building a checkpoint or exporting does.
"""
import sys
import tempfile
from pathlib import Path

TINY_LABELS = ["cat", "dog", "bird", "fish"]
TINY_SAMPLER_DEFAULTS = {"cfg_scale": 2.0, "temperature": 1.0, "top_k": 0, "top_p": 1.0}
COMMITTED_MODEL = Path(__file__).resolve().parents[1] / "data" / "tiny-model"
# the committed folder's tokenizer is half as wide as the suite's other tiny models, with one width at every
# level: its decoder graph is then ~50 kB instead of ~800 kB, and the whole folder stays near 260 kB
COMMITTED_TOKENIZER = {"ch": 8, "ch_mult": [1, 1, 1, 1]}
# the export's record of its source checkpoint: a temporary file, whose path and bytes differ at each run
PROVENANCE_KEYS = ("checkpoint", "checkpoint_sha256")


def build_checkpoint(path, seed: int = 0, meta=None, **overrides) -> tuple:
    """Save a random tiny Transformer + matching RQTokenizer; returns (path, model, tokenizer).
    `overrides`: ModelArgs fields, and `tokenizer_config` (TokenizerConfig fields)."""
    from dnd_training.random_checkpoint import random_checkpoint

    return random_checkpoint(path, "tiny", seed, head_std=0.5, labels=TINY_LABELS,
                             meta=meta if meta is not None else {"note": "random init for tests"}, **overrides)


def tiny_checkpoint(path, **overrides) -> Path:
    """checkpoint.pt of MODEL_CONFIGS["tiny"] (D=2, grid 2x4, V=64, GQA, null class), labels cat/dog/bird/fish."""
    return build_checkpoint(path, meta={"sampler_defaults": dict(TINY_SAMPLER_DEFAULTS)}, **overrides)[0]


def export_committed_recipe(out: Path) -> Path:
    """The fp32 folder of the committed recipe, exported by today's exporter into the new folder `out`, without
    the record of its temporary checkpoint."""
    import torch

    from dnd_export import export_model
    from dnd_sdk.model_folder.manifest import load_manifest, write_manifest

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = tiny_checkpoint(Path(tmp) / "checkpoint.pt", tokenizer_config=COMMITTED_TOKENIZER)
        export_model(checkpoint, out, dtype="fp32")
    manifest = load_manifest(out)
    for key in PROVENANCE_KEYS:
        manifest.producer.pop(key)
    write_manifest(out, manifest)
    return out


def main() -> None:
    """Write tests/data/tiny-model again."""
    import shutil

    with tempfile.TemporaryDirectory() as tmp:
        fresh = export_committed_recipe(Path(tmp) / "model")
        shutil.rmtree(COMMITTED_MODEL, ignore_errors=True)
        shutil.copytree(fresh, COMMITTED_MODEL)
    size = sum(f.stat().st_size for f in COMMITTED_MODEL.iterdir())
    print(f"wrote {COMMITTED_MODEL} ({size / 1024:.0f} kB)", file=sys.stderr)


if __name__ == "__main__":
    main()
