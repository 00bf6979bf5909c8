"""--check: Polygraphy comparison of the exported graphs against the PyTorch model."""
import logging
import re

import pytest
import torch
from click.testing import CliRunner

from dnd_export import ExportCheckError, export_model
from dnd_export.check import check_export
from dnd_export.cli import main
from dnd_training.checkpoint import load_checkpoint


@pytest.mark.parametrize("dtype, logits_atol", [("fp32", 1e-4), ("fp16", 2e-2)])
def test_check_passes_and_reports_every_output(tiny_checkpoint, tmp_path, caplog, dtype, logits_atol):
    with caplog.at_level(logging.INFO, logger="dnd_export"):
        export_model(tiny_checkpoint, tmp_path / dtype, dtype=dtype, check=True)
    rows = [r.getMessage() for r in caplog.records if "max abs" in r.getMessage()]
    # stage0: logits, hidden_out, 2 layers x key/value; stage1: 2 + 2; decoder: image
    assert len(rows) == 6 + 4 + 1 and all(r.startswith("ok") for r in rows)
    ckpt = load_checkpoint(tiny_checkpoint)
    dt = {"fp32": torch.float32, "fp16": torch.float16}[dtype]
    results = check_export(tmp_path / dtype, ckpt.build_model(dt), ckpt.build_tokenizer().to(dt))
    logits = [r for r in results if r.output == "logits"]
    assert len(logits) == 2 and all(0 <= r.max_abs <= logits_atol for r in logits)


def test_check_fails_loudly_on_a_different_model(tiny_checkpoint, tmp_path):
    out = export_model(tiny_checkpoint, tmp_path / "model")
    ckpt = load_checkpoint(tiny_checkpoint)
    model = ckpt.build_model()
    with torch.no_grad():
        model.output[1].weight.mul_(1.01)  # 1% off in head 1 only
    with pytest.raises(ExportCheckError, match=r"stage1/logits abs .*beyond tolerance|beyond tolerance.*stage1/logits"):
        check_export(out, model, ckpt.build_tokenizer())


def test_cli_check_prints_errors(tiny_checkpoint, tmp_path):
    result = CliRunner().invoke(main, [str(tiny_checkpoint), "-o", str(tmp_path / "m"), "--check"])
    assert result.exit_code == 0, result.output
    assert re.search(r"ok +stage0 +logits +max abs", result.output)
    assert re.search(r"ok +decoder +image +max abs 0 ", result.output)
