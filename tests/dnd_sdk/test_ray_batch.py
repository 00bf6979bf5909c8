"""`dnd generate --ray`: the files of one process, byte for byte, also with a worker or the driver killed mid-run.

One local Ray cluster (2 CPUs, no dashboard) serves every test here; runs in this process use its
connection, CLI runs in subprocesses join it by address.
"""
import os
import signal
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from dnd_sdk import Generator
from dnd_sdk.batch import BatchJob, _shard_lock, run_batch
from dnd_sdk.cli.main import cli
from dnd_sdk.errors import ClusterError, InvalidInputError, ManifestError, OutputError
from dnd_sdk.ray_batch import PRIVATE_CLUSTER, RayOptions, run_batch_ray

os.environ.update(PRIVATE_CLUSTER)  # before ray is imported: the test cluster listens on 127.0.0.1 only
ray = pytest.importorskip("ray", reason="the ray extra is not installed")
pytestmark = pytest.mark.slow  # a cluster, workers and subprocesses: seconds per test

JOB = dict(num=40, seed=3, npz=True, grid=True)
CLI_JOB = ["--num", "40", "--seed", "3", "--npz", "--grid", "--threads", "1", "--quiet"]


def tree(folder):
    """{relative path: bytes} of every file under folder, temporary ones included."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """GCS address of a 2-CPU local cluster, this process connected to it."""
    env = {"RAY_USAGE_STATS_ENABLED": "0"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    # a killed worker leaves its copy of a shipped model behind: in this test's folder, not in /tmp
    workers_tmp = str(tmp_path_factory.mktemp("ray-workers"))
    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=100 * 2**20,
             log_to_driver=False, runtime_env={"env_vars": {"TMPDIR": workers_tmp}})
    try:
        address = ray.get_runtime_context().gcs_address
        assert address.startswith("127.0.0.1:"), address
        yield address
    finally:
        ray.shutdown()
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


@pytest.fixture(scope="module")
def single(tiny_model_dir, tmp_path_factory):
    """The files of a plain single-process run of JOB."""
    out = tmp_path_factory.mktemp("single") / "out"
    with Generator(tiny_model_dir, threads=1) as gen:
        run_batch(gen, out, BatchJob(batch_size=4, **JOB), progress=False)
    return tree(out)


def dnd(*args, timeout=120, env=None):
    return subprocess.run([sys.executable, "-c", "from dnd_sdk.cli.main import main; main()", *args],
                          capture_output=True, text=True, timeout=timeout, env=env)


def test_two_workers_write_the_files_of_one_process(cluster, tiny_model_dir, single, tmp_path):
    s = run_batch_ray(tiny_model_dir, tmp_path / "out", BatchJob(batch_size=3, **JOB), RayOptions(workers=2),
                      progress=False)
    assert tree(tmp_path / "out") == single
    assert (s.made, s.skipped, s.complete, s.lost) == (40, 0, True, 0)
    assert 1 <= len(s.workers) <= 2 and sum(w.images for w in s.workers) == 40  # a slow starter may miss the run
    assert all(w.backend == "onnxruntime-cpu" and w.images_per_s > 0 for w in s.workers)
    again = run_batch_ray(tiny_model_dir, tmp_path / "out", BatchJob(**JOB), RayOptions(workers=2), progress=False)
    assert (again.made, again.skipped, again.complete) == (0, 40, True)
    assert tree(tmp_path / "out") == single


def test_a_killed_worker_is_replaced_and_nothing_changes(cluster, tiny_model_dir, single, tmp_path):
    killed = []

    def kill_the_worker(worker, done, total):
        if not killed:  # the worker that made the first chunk, while its next chunk is queued on it
            killed.append(worker.name)
            ray.kill(ray.get_actor(worker.name))

    # ship_model: the workers get the folder through the object store, the replacement too
    s = run_batch_ray(tiny_model_dir, tmp_path / "out", BatchJob(batch_size=2, **JOB),
                      RayOptions(workers=2, ship_model=True), progress=False, on_chunk=kill_the_worker)
    assert s.lost == 1 and s.made == 40 and s.complete
    assert sum(w.images for w in s.workers) == 40  # its chunk in flight was made once, by another worker
    assert tree(tmp_path / "out") == single


def test_a_worker_opens_the_model_by_path_or_from_the_object_store_and_checks_it(cluster, tiny_model_dir, tmp_path):
    from dnd_sdk.model_folder.hashing import sha256_bytes
    from dnd_sdk.ray_batch import _Worker
    digest = sha256_bytes((tiny_model_dir / "manifest.json").read_bytes())
    assert _Worker().load(str(tmp_path / "elsewhere"), digest, None, "onnxruntime-cpu", 1) is None  # path not seen
    copy = tmp_path / "other"  # a folder at the path with another manifest.json is not the model either
    copy.mkdir()
    (copy / "manifest.json").write_text("{}")
    assert _Worker().load(str(copy), digest, None, "onnxruntime-cpu", 1) is None
    files = {p.name: p.read_bytes() for p in tiny_model_dir.iterdir()}
    worker = _Worker()
    assert worker.load(str(copy), digest, {k: ray.put(v) for k, v in files.items()}, "onnxruntime-cpu", 1)["backend"] \
        == "onnxruntime-cpu"
    worker.close()
    files["decoder.onnx"] = files["decoder.onnx"][:-1] + bytes([files["decoder.onnx"][-1] ^ 1])
    with pytest.raises(ManifestError, match="decoder.onnx: contents do not match"):
        _Worker().load(str(copy), digest, {k: ray.put(v) for k, v in files.items()}, "onnxruntime-cpu", 1)


def test_a_killed_driver_reruns_to_the_same_files(cluster, tiny_model_dir, single, tmp_path):
    out = tmp_path / "out"
    args = ["generate", str(tiny_model_dir), "--out", str(out), *CLI_JOB, "--ray", cluster, "--workers", "2"]
    proc = subprocess.Popen([sys.executable, "-c", "from dnd_sdk.cli.main import main; main()", *args,
                             "--batch-size", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(out.glob("*.png")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    pngs = list(out.glob("*.png"))
    assert 0 < len(pngs) < 40 and not (out / "metadata.jsonl").exists(), "the driver was not killed mid-run"
    rerun = dnd(*args)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{40 - len(pngs)} made, {len(pngs)} already there (complete) on " in rerun.stdout
    assert tree(out) == single


def test_refusals_user_errors_a_busy_shard_and_a_cluster_too_small(cluster, tiny_model_dir, tmp_path):
    with pytest.raises(InvalidInputError, match="unknown label 'zebra'"):  # raised on a worker, as itself
        run_batch_ray(tiny_model_dir, tmp_path / "a", BatchJob(num=4, labels=["zebra"]), RayOptions(), progress=False)
    assert not (tmp_path / "a").exists()
    (tmp_path / "busy").mkdir()
    with _shard_lock(tmp_path / "busy", "shard0of1-", (0, 1)):  # a plain `dnd generate` writing the same shard
        with pytest.raises(OutputError, match="another `dnd generate` is writing shard 0/1"):
            run_batch_ray(tiny_model_dir, tmp_path / "busy", BatchJob(num=4), RayOptions(), progress=False)
    assert not list((tmp_path / "busy").glob("*.png"))
    with pytest.raises(ClusterError, match=r"3 worker\(s\) of 1 CPU each need 3 CPUs but the cluster has 2; lower workers"):
        run_batch_ray(tiny_model_dir, tmp_path / "b", BatchJob(num=4), RayOptions(workers=3), progress=False)
    with pytest.raises(ClusterError, match="need 1 GPUs but the cluster has 0; lower workers or worker_gpus"):
        run_batch_ray(tiny_model_dir, tmp_path / "b", BatchJob(num=4), RayOptions(worker_gpus=1), progress=False)
    assert not (tmp_path / "b").exists()
    result = CliRunner().invoke(cli, ["generate", str(tiny_model_dir), "--num", "2", "--out", str(tmp_path / "c"),
                                      "--workers", "2"])
    assert result.exit_code == 2 and "--workers needs --ray" in result.output


NO_RAY = r"""
import sys
from dnd_sdk.cli.main import main

def run(*args):
    try:
        main(list(args))
    except SystemExit as e:
        return e.code

assert run("generate", sys.argv[1], "--num", "2", "--out", sys.argv[2], "--threads", "1", "--quiet") == 0
assert not [m for m in sys.modules if m.split(".")[0] == "ray"], "a plain run imported ray"
print("PLAIN RUN OK")
sys.modules["ray"] = None  # as if ray were not installed
assert run("generate", sys.argv[1], "--num", "2", "--out", sys.argv[3], "--ray") == 1
"""


def test_plain_runs_never_import_ray_and_a_missing_ray_is_one_line(tiny_model_dir, tmp_path):
    proc = subprocess.run([sys.executable, "-c", NO_RAY, str(tiny_model_dir), str(tmp_path / "a"), str(tmp_path / "b")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "PLAIN RUN OK" in proc.stdout, proc.stderr
    assert proc.stderr.strip().splitlines() == ["Error: a Ray run needs ray: pip install 'dnd-sdk[ray]' "
                                                "(import of ray halted; None in sys.modules)"]
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("address, error", [
    ("127.0.0.1:1", "Error: no Ray cluster answers at '127.0.0.1:1' ([Errno 111] Connection refused); give HOST:PORT"),
    ("head-node", "Error: --ray must be local, auto, HOST:PORT or ray://HOST:PORT, got 'head-node'"),
])
def test_an_unreachable_or_malformed_address_is_one_line(tiny_model_dir, tmp_path, address, error):
    proc = dnd("generate", str(tiny_model_dir), "--num", "2", "--out", str(tmp_path / "a"), "--ray", address)
    assert proc.returncode == 1 and not (tmp_path / "a").exists()
    assert len(proc.stderr.strip().splitlines()) == 1 and proc.stderr.startswith(error), proc.stderr


def test_a_private_cluster_starts_without_the_token_warning(tiny_model_dir, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in PRIVATE_CLUSTER}  # as a user's shell has it
    env["OMP_NUM_THREADS"] = "1"
    proc = dnd("generate", str(tiny_model_dir), "--num", "2", "--out", str(tmp_path / "a"), "--ray", "--threads", "1",
               "--quiet", env=env)
    assert proc.returncode == 0, proc.stderr
    assert "Token authentication" not in proc.stderr and "2 made" in proc.stdout
