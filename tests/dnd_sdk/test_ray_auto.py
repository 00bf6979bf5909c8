"""`dnd generate --ray auto` where no Ray cluster runs: one line in dnd's own flags.

A file of its own: test_ray_batch.py keeps a cluster running for its tests, and `auto` would join it."""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

# only looked up, never imported here: ray reads its settings once, at import, and test_ray_batch.py
# sets them (PRIVATE_CLUSTER) before it imports ray in this process
pytestmark = pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="the ray extra is not installed")


def a_cluster_runs_here() -> bool:
    """A Ray head's GCS server among this machine's processes (Linux: /proc/PID/comm)."""
    names = []
    for comm in Path("/proc").glob("[0-9]*/comm"):
        try:
            names.append(comm.read_text().strip())
        except OSError:  # the process ended meanwhile
            pass
    return not names or "gcs_server" in names  # no /proc: cannot tell, so do not try


@pytest.mark.skipif(a_cluster_runs_here(), reason="a Ray cluster runs on this machine, and `auto` would join it")
def test_auto_without_a_cluster_names_dnds_own_flags(tiny_model_dir, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run([sys.executable, "-c", "from dnd_sdk.cli.main import main; main()", "generate",
                           str(tiny_model_dir), "--num", "2", "--out", str(tmp_path / "a"), "--ray", "auto"],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 1 and not (tmp_path / "a").exists()
    assert proc.stderr.strip().splitlines() == [
        "Error: no Ray cluster runs on this machine for --ray auto (`ray start --head` starts one; RAY_ADDRESS names "
        "another). Give --ray HOST:PORT of a head node, or --ray local for a private cluster of this machine"]
