"""The batch job: files written, shards, resume rules, and refusal of bad or foreign runs."""
import json
import os
import threading

import numpy as np
import pytest
from PIL import Image

from dnd_sdk.batch import BatchJob, run_batch
from dnd_sdk.errors import InvalidInputError
from dnd_sdk.sampler import SamplingParams


def tree(folder):
    """{relative path: bytes} of every file under folder."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def single(gen, tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "out"
    summary = run_batch(gen, out, BatchJob(num=10, seed=4, batch_size=4, npz=True, grid=True), progress=False)
    assert summary.complete and summary.made == 10 and summary.skipped == 0
    return out


def test_files_and_metadata(gen, single):
    names = sorted(tree(single))
    assert names == [f"{i:06d}.png" for i in range(10)] + ["grid.png", "metadata.jsonl", "run.json", "samples.npz"]
    lines = [json.loads(x) for x in (single / "metadata.jsonl").read_text().splitlines()]
    assert [x["index"] for x in lines] == list(range(10))
    assert lines[5] == {"index": 5, "file": "000005.png", "label": 1, "label_name": "dog", "seed": 4, "cfg_scale": 2.0,
                        "temperature": 1.0, "top_k": 0, "top_p": 1.0, "head_temperatures": None}
    arr = np.load(single / "samples.npz")["arr_0"]
    assert arr.shape == (10, 16, 32, 3) and arr.dtype == np.uint8
    expected = np.stack([np.asarray(im) for im in gen.sample(num=10, seed=4)])
    assert np.array_equal(arr, expected)
    assert np.array_equal(np.asarray(Image.open(single / "000007.png")), expected[7])
    # 4 classes per row, 2px gaps, a 13px caption strip under each cell (class-conditional model)
    assert Image.open(single / "grid.png").size == (4 * 34 + 2, 3 * (18 + 13) + 2)


def test_outputs_get_the_usual_file_modes(single, tiny_model_dir):
    # atomic writes go through private temporary files; the results must not stay private
    umask = os.umask(0o022)
    os.umask(umask)
    assert {p.stat().st_mode & 0o777 for p in single.iterdir()} == {0o666 & ~umask}
    assert tiny_model_dir.stat().st_mode & 0o777 == 0o777 & ~umask  # a staged export folder


def test_shards_sharing_a_folder_equal_a_single_run(gen, single, tmp_path):
    out = tmp_path / "sharded"
    parts = [run_batch(gen, out, BatchJob(num=10, seed=4, batch_size=3, npz=True, grid=True, shard=(i, 3)), progress=False)
             for i in range(3)]
    assert [p.made for p in parts] == [3, 3, 4] and [p.complete for p in parts] == [False, False, True]
    assert tree(out) == tree(single)


def test_shards_in_separate_folders_are_disjoint_and_cover_the_run(gen, single, tmp_path):
    seen = {}
    for i in range(2):
        run_batch(gen, tmp_path / str(i), BatchJob(num=10, seed=4, shard=(i, 2)), progress=False)
        pngs = {k: v for k, v in tree(tmp_path / str(i)).items() if k.endswith(".png")}
        assert not set(pngs) & set(seen)
        seen.update(pngs)
    assert seen == {k: v for k, v in tree(single).items() if k[0].isdigit()}


def test_rerun_resumes_and_changes_nothing(gen, single, tmp_path):
    out = tmp_path / "out"
    run_batch(gen, out, BatchJob(num=10, seed=4, batch_size=4, npz=True, grid=True), progress=False)
    for name in ("000003.png", "000008.png", "metadata.jsonl", "samples.npz"):
        (out / name).unlink()
    (out / ".shard0of1-000004.png.abc.tmp").write_bytes(b"half a png")  # what a kill leaves behind
    summary = run_batch(gen, out, BatchJob(num=10, seed=4, batch_size=7, npz=True, grid=True), progress=False)
    assert (summary.made, summary.skipped) == (2, 8)
    assert tree(out) == tree(single)


def test_refuses_a_folder_made_with_other_arguments(gen, single):
    before = tree(single)
    with pytest.raises(InvalidInputError, match=r"different arguments \(seed: 4 there, 5 now\)"):
        run_batch(gen, single, BatchJob(num=10, seed=5), progress=False)
    with pytest.raises(InvalidInputError, match="cfg_scale"):
        run_batch(gen, single, BatchJob(num=10, seed=4, sampling=SamplingParams(cfg_scale=3.0)), progress=False)
    assert tree(single) == before


def test_refuses_a_foreign_folder(gen, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(InvalidInputError, match="not made by `dnd generate`"):
        run_batch(gen, tmp_path, BatchJob(num=2), progress=False)
    assert tree(tmp_path) == {"notes.txt": b"mine"}


def test_labels_and_per_class(gen, tmp_path):
    run_batch(gen, tmp_path / "a", BatchJob(labels=["fish", "0"], num=3), progress=False)
    lines = [json.loads(x) for x in (tmp_path / "a" / "metadata.jsonl").read_text().splitlines()]
    assert [(x["label"], x["label_name"]) for x in lines] == [(3, "fish"), (0, "cat"), (3, "fish")]
    run_batch(gen, tmp_path / "b", BatchJob(per_class=2), progress=False)
    lines = [json.loads(x) for x in (tmp_path / "b" / "metadata.jsonl").read_text().splitlines()]
    assert [x["label"] for x in lines] == [0, 1, 2, 3, 0, 1, 2, 3]


@pytest.mark.parametrize("job, fragment", [
    (BatchJob(), "give num, labels or per_class"),
    (BatchJob(labels=["cat"], per_class=2), "not both"),
    (BatchJob(num=5, per_class=2), "contradicts per_class"),
    (BatchJob(per_class=0), "per_class must be"),
    (BatchJob(num=0), "num must be"),
    (BatchJob(num=4, labels=["cat", "zebra"]), "unknown label 'zebra'"),
    (BatchJob(num=4, shard=(2, 2)), "shard must be I/N"),
    (BatchJob(num=4, shard=(True, 2)), r"shard must be I/N with 0 <= I < N, got True/2"),  # a bool is no index
    (BatchJob(num=4, shard=(0, True)), r"shard must be I/N with 0 <= I < N, got 0/True"),
    (BatchJob(num=4, shard=(0,)), r"shard must be I/N with 0 <= I < N, got \(0,\)"),
    (BatchJob(num=4, shard="0/2"), "shard must be I/N with 0 <= I < N, got '0/2'"),
    (BatchJob(num=10**5000), r"num must be an integer in \[1, 10000000\], got <an integer of 16610 bits>"),
    (BatchJob(num=4, seed=10**5000), "seed must be an integer >= 0, got <an integer of 16610 bits>"),
    (BatchJob(per_class=10**5000), "per_class must be an integer"),
    (BatchJob(num=4, batch_size=0), "batch_size"),
    (BatchJob(num=4, sampling=SamplingParams(top_p=2.0)), r"top_p must be in \(0, 1\]"),
    # one type carries the settings: anything else is refused, saying what to pass
    (BatchJob(num=4, sampling={"top_k": 3}), r"sampling must be a SamplingParams, e\.g\. sampling=SamplingParams\("
                                             r"cfg_scale=2\.0, top_k=50\) .*; got \{'top_k': 3\}"),
    (BatchJob(num=4, sampling=[("top_k", 3)]), r"sampling must be a SamplingParams.*got \[\('top_k', 3\)\]"),
])
def test_bad_jobs_write_nothing(gen, tmp_path, job, fragment):
    with pytest.raises(InvalidInputError, match=fragment):
        run_batch(gen, tmp_path / "out", job, progress=False)
    assert not (tmp_path / "out").exists()


def test_kill_before_run_json_landed_is_resumed(gen, single, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / ".shard0of1-run.json.x1.tmp").write_bytes(b'{"format": ')  # killed while claiming the folder
    run_batch(gen, out, BatchJob(num=10, seed=4, npz=True, grid=True), progress=False)
    assert tree(out) == tree(single)


def test_runs_claiming_one_folder_at_once_get_exactly_one_owner(tmp_path):
    from dnd_sdk.batch import _claim
    identities = [{"format": "dnd-generate-run", "seed": i % 2} for i in range(8)]
    for attempt in range(20):  # the race window is small: try many times
        out, barrier, results = tmp_path / f"race{attempt}", threading.Barrier(8), [None] * 8

        def claim(i):
            barrier.wait()
            try:
                _claim(out, identities[i], f"shard{i}of8-")
                results[i] = "ok"
            except InvalidInputError as e:
                results[i] = str(e)
        threads = [threading.Thread(target=claim, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        owner = json.loads((out / "run.json").read_text())["seed"]
        # the owner's shards all proceed; every other one is refused for its arguments
        assert [r == "ok" for r in results] == [i % 2 == owner for i in range(8)], results
        assert all("different arguments" in r for r in results if r != "ok")
