"""Generator: backend choice, request semantics, determinism across batching, typed errors."""
import logging
import shutil
import time

import numpy as np
import pytest
from PIL import Image

from dnd_sdk import Generator
from dnd_sdk.errors import BackendUnavailableError, InvalidInputError, ManifestError


@pytest.fixture(scope="module")
def unguided_model_dir(make_checkpoint, tmp_path_factory):
    from dnd_export import export_model
    folder = tmp_path_factory.mktemp("no_null")
    return export_model(make_checkpoint(folder / "c.pt", class_dropout_prob=0.0), folder / "model", dtype="fp32")


def test_auto_backend_is_reported_and_logged(tiny_model_dir, caplog):
    with caplog.at_level(logging.INFO, logger="dnd_sdk"):
        g = Generator(tiny_model_dir, threads=1)
    assert g.backend_name == "onnxruntime-cpu"
    assert "runs on onnxruntime-cpu" in caplog.text
    assert "tensorrt skipped" in caplog.text  # the fallback list was walked in order


def test_image_depends_on_seed_and_index_not_on_batch_size(gen):
    kw = dict(seed=3, cfg_scale=2.0, temperature=1.0, top_k=20, top_p=0.95)
    runs = [gen.sample_codes(num=11, batch_size=b, **kw) for b in (1, 3, 8)]
    assert np.array_equal(runs[0], runs[1]) and np.array_equal(runs[0], runs[2])
    assert np.array_equal(gen.sample_codes(num=4, start=5, **kw), runs[0][5:9])
    assert np.array_equal(gen.sample_codes(image_indices=[9, 2], **kw), runs[0][[9, 2]])
    assert not np.array_equal(gen.sample_codes(num=11, **{**kw, "seed": 4}), runs[0])
    images = gen.sample(num=11, batch_size=3, **kw)
    assert [im.tobytes() for im in images] == [im.tobytes() for im in gen.decode(runs[0])]


def test_labels_by_name_id_or_default(gen):
    same = gen.sample_codes(labels=["dog", 1, "1"], image_indices=[4, 4, 4], seed=0)
    assert np.array_equal(same[0], same[1]) and np.array_equal(same[0], same[2])
    assert np.array_equal(gen.sample_codes(labels="dog", start=4, seed=0)[0], same[0])
    # no labels: image index i gets class i % num_classes
    assert np.array_equal(gen.sample_codes(num=6, seed=2), gen.sample_codes(labels=[0, 1, 2, 3, 0, 1], seed=2))
    assert np.array_equal(gen.sample_codes(num=6, seed=2), gen.sample_codes(labels=["cat", "dog", "bird", "fish"], num=6, seed=2))
    assert len(gen.sample_codes(seed=0)) == gen.num_classes == 4


def test_unset_parameters_come_from_manifest_defaults(gen):
    assert gen.manifest.sampler_defaults["cfg_scale"] == 2.0
    explicit = gen.sample_codes(num=4, seed=1, cfg_scale=2.0, temperature=1.0, top_k=0, top_p=1.0)
    assert np.array_equal(gen.sample_codes(num=4, seed=1), explicit)
    assert not np.array_equal(gen.sample_codes(num=4, seed=1, cfg_scale=1.0), explicit)
    assert np.array_equal(gen.sample_codes(num=4, seed=1, temperature=3.0, head_temperatures=[0, 0]),
                          gen.sample_codes(num=4, seed=1, temperature=0))


def test_sample_returns_rgb_images(gen):
    images = gen.sample(labels=["fish"], seed=0)
    assert len(images) == 1 and isinstance(images[0], Image.Image)
    assert images[0].mode == "RGB" and images[0].size == (32, 16)


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(labels=["dog", "unicorn"]), "unknown label 'unicorn'"),
    (dict(labels=[4]), "class id 4 is out of range"),
    (dict(labels=[-1]), "class id -1 is out of range"),
    (dict(labels=[1.5]), "class name or an int"),
    (dict(labels=[]), "labels must hold 1..10,000,000"),
    (dict(temperature=-0.1), "temperature must be >= 0"),
    (dict(top_p=0.0), "top_p must be in"),
    (dict(top_p=1.01), "top_p must be in"),
    (dict(top_k=-1), "top_k must be an integer in"),
    (dict(top_k=65), "top_k must be an integer in"),
    (dict(cfg_scale=-1.0), r"cfg_scale must be in \[0, 100\]"),
    (dict(num=0), r"num must be an integer in \[1, 10000000\], got 0"),
    (dict(batch_size=0), r"batch_size must be an integer in \[1, 10000000\]"),
    (dict(seed=-1), "seed must be an integer >= 0"),
    (dict(image_indices=[1, -2]), "image_indices"),
    (dict(image_indices=[1], start=2), "not both"),
    (dict(num=3, image_indices=[0, 1]), "num=3 but 2 image_indices"),
    (dict(num=2.5), "num must be an integer"),
    # types the API cannot mean: each names the argument and what it takes
    (dict(labels=3.0), "labels must be a class name, an int class id or a list of them, got 3.0"),
    (dict(labels=object()), "labels must be a class name, an int class id or a list"),
    (dict(top_p="0.5"), "top_p must be a finite number, got '0.5'"),
    (dict(cfg_scale="2"), "cfg_scale must be a finite number, got '2'"),
    (dict(temperature="0.1"), "temperature must be a finite number, got '0.1'"),
    (dict(head_temperatures=5), "head_temperatures must be a list of 2 numbers .one per depth., got 5"),
    (dict(head_temperatures="abcd"), "head_temperatures must be a list of 2 numbers"),
    (dict(head_temperatures=["a", 1]), "head_temperatures must be a finite number, got 'a'"),
    (dict(start=2**70), r"start must be an integer in \[0, "),
    (dict(num=10**20), r"num must be an integer in \[1, 10000000\]"),
    (dict(num=10**13), r"num must be an integer in \[1, 10000000\]"),
    (dict(top_k=3.7), r"top_k must be an integer in \[0, 64\], got 3.7"),
    (dict(top_k="5"), r"top_k must be an integer in \[0, 64\], got '5'"),
    (dict(top_k=True), r"top_k must be an integer in \[0, 64\], got True"),
    (dict(cfg_scale=1e308), r"cfg_scale must be in \[0, 100\]"),
    (dict(seed=2**64), "seed must be an integer >= 0"),
    (dict(image_indices=[1, True]), r"image_indices must be a flat list of 1 to 10,000,000 integers >= 0, got \[1, True\]"),
    (dict(image_indices=(np.True_,)), "image_indices must be"),
    (dict(num=5000, timeout="5"), "timeout must be a finite number, got '5'"),
    (dict(num=5000, timeout=-1), "timeout must be a number of seconds >= 0 and at most 9223372036 .or None"),
    # input that Python or numpy cannot convert: past int()'s digit limit, ragged, too long for the clock
    (dict(labels=["9" * 5000]), r"class id 9999.*\.\.\..*9999 is out of range; this model has classes 0\.\.3"),
    (dict(labels=[10**5000]), r"class id <an integer of 16610 bits> is out of range"),
    (dict(labels=" 00000000000000000000000000002 "), None),  # leading zeros: still class 2
    (dict(labels=["1" + "0" * 19]), r"class id 10000000000000000000 is out of range"),
    (dict(image_indices=[[1], [2, 3]]), r"image_indices must be a flat list .*, got \[\[1\], \[2, 3\]\]"),
    (dict(image_indices=[[1], [2]]), "image_indices must be a flat list"),
    (dict(image_indices=np.array([[1], [2]])), "image_indices must be a flat list"),
    (dict(image_indices=[0, 10**5000]), r"image_indices must be .*, got \[0, <an integer of 16610 bits>\]"),
    (dict(image_indices=[2**63]), "image_indices must be a flat list"),
    (dict(image_indices=[0], start=np.array([1, 2])), "not both"),
    (dict(seed=10**5000), "seed must be an integer >= 0, got <an integer of 16610 bits>"),
    (dict(num=10**5000), r"num must be an integer in \[1, 10000000\], got <an integer"),
    (dict(start=-10**5000), r"start must be an integer in \[0, "),
    (dict(batch_size=10**5000), "batch_size must be an integer"),
    (dict(top_k=10**5000), r"top_k must be an integer in \[0, 64\]"),
    (dict(cfg_scale=10**5000), "cfg_scale must be a finite number, got <an integer"),
    (dict(temperature=-10**400), "temperature must be a finite number"),
    (dict(head_temperatures=[1, 10**5000]), "head_temperatures must be a finite number"),
    (dict(num=5000, timeout=1e300), "timeout must be a number of seconds >= 0 and at most"),
    (dict(num=5000, timeout=10**5000), "timeout must be a finite number"),
])
def test_bad_requests_are_typed_errors(gen, kwargs, fragment):
    if fragment is None:  # a valid request in an unusual spelling
        assert gen.request(**kwargs).labels.tolist() == [2]
        return
    with pytest.raises(InvalidInputError, match=fragment):
        gen.sample(**kwargs)
    assert gen.scheduler.queue_depth == gen.scheduler.images_in_flight == 0  # refused before anything was queued


def test_batch_beyond_the_backend_limit_is_refused(gen):
    gen.backend.max_batch = 4  # what an engine built for 4 rows reports
    try:
        with pytest.raises(InvalidInputError, match="needs 6 rows .guidance doubles them.*batch_size <= 2"):
            gen.sample(num=8, batch_size=3, cfg_scale=2.0)
        assert len(gen.sample_codes(num=8, batch_size=4, cfg_scale=1.0)) == 8
    finally:
        gen.backend.max_batch = None


def test_guidance_on_one_row_says_what_would_run_it(tiny_model_dir, gen):
    with Generator(tiny_model_dir, threads=1, max_batch=1) as one_row:
        with pytest.raises(InvalidInputError, match=r"guidance \(a cfg_scale other than 1\) needs 2 rows per image, "
                                                    r"but max_batch allows at most 1; "
                                                    r"use cfg_scale 1, or max_batch >= 2$"):
            one_row.sample(labels=[0], cfg_scale=2)
        assert len(one_row.sample(labels=[0], cfg_scale=1)) == 1
    gen.backend.max_batch = 1  # what an engine built for one row reports
    try:
        with pytest.raises(InvalidInputError, match="was built for at most 1; use cfg_scale 1, or engines built for 2"):
            gen.sample(labels=[0], cfg_scale=2)
    finally:
        gen.backend.max_batch = None


def test_guidance_needs_a_null_class(unguided_model_dir):
    g = Generator(unguided_model_dir, threads=1)
    with pytest.raises(InvalidInputError, match="without a null class"):
        g.sample(num=1, cfg_scale=2.0)
    assert g.sample_codes(num=2, cfg_scale=1.0).shape == (2, 2, 4, 2)


@pytest.mark.parametrize("codes, fragment", [
    (np.zeros((1, 2, 4, 2), np.float32), "integer array"),
    (np.zeros((1, 2, 4), np.int64), r"shape \[n >= 1, 2, 4, 2\]"),
    (np.zeros((0, 2, 4, 2), np.int64), r"shape \[n >= 1"),
    (np.full((1, 2, 4, 2), 64), r"\[0, 64\)"),
    (np.full((1, 2, 4, 2), -1), r"\[0, 64\)"),
    ([[[[1, 2]]], [[[1]]]], r"codes must be an integer array of shape \[n, 2, 4, 2\], got \[\[\[\[1, 2\]\]\], "),
    ([[[[10**5000]]]], "codes must be an integer array, got dtype object"),
])
def test_bad_codes_are_typed_errors(gen, codes, fragment):
    with pytest.raises(InvalidInputError, match=fragment):
        gen.decode(codes)


def test_decode_accepts_any_integer_dtype(gen):
    codes = gen.sample_codes(num=2, seed=0)
    a, b = gen.decode(codes.astype(np.uint8)), gen.decode(codes)
    assert [im.tobytes() for im in a] == [im.tobytes() for im in b]


def test_folder_that_is_not_a_model(tmp_path):
    with pytest.raises(ManifestError, match="no manifest.json"):
        Generator(tmp_path)


def test_modified_file_is_named(tiny_model_dir, tmp_path):
    copy = shutil.copytree(tiny_model_dir, tmp_path / "model")
    data = bytearray((copy / "stage1.onnx").read_bytes())
    data[-1] ^= 1
    (copy / "stage1.onnx").write_bytes(bytes(data))
    with pytest.raises(ManifestError, match="stage1.onnx"):
        Generator(copy)


def test_unknown_or_unavailable_backend(tiny_model_dir):
    import onnxruntime
    with pytest.raises(InvalidInputError, match="unknown backend 'tpu'"):
        Generator(tiny_model_dir, backend="tpu")
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        with pytest.raises(BackendUnavailableError, match="onnxruntime-cuda: .*CUDAExecutionProvider"):
            Generator(tiny_model_dir, backend="onnxruntime-cuda")
    with pytest.raises(BackendUnavailableError, match="tensorrt: "):
        Generator(tiny_model_dir, backend="tensorrt")  # no engines in an ONNX folder, whatever is installed


def test_bf16_tables_are_read_from_their_bit_patterns():
    from dnd_sdk.generator import _float32_table
    bits = np.array([[0x3F80, 0xC040], [0x0000, 0x3E20]], dtype=np.uint16)  # 1.0, -3.0, 0.0, 0.15625
    assert _float32_table(bits).tolist() == [[1.0, -3.0], [0.0, 0.15625]]
    assert _float32_table(np.array([0.5], np.float16)).dtype == np.float32


def test_repr_says_what_the_generator_holds(gen, tiny_model_dir):
    image = gen.manifest.image
    assert repr(gen) == (f"Generator({str(tiny_model_dir)!r}, backend='onnxruntime-cpu', labels=4, "
                         f"image={image['height']}x{image['width']})")


def test_an_error_quotes_a_huge_value_cut_short(gen):
    for kwargs in (dict(labels=["x" * 10**6]), dict(image_indices=list(range(10**6)) + [-1]), dict(top_p="9" * 10**6)):
        with pytest.raises(InvalidInputError) as error:
            gen.request(**kwargs)
        assert len(str(error.value)) < 300, str(error.value)[:300]


def test_a_huge_range_of_image_indices_is_refused_at_once(gen):
    t0 = time.perf_counter()
    with pytest.raises(InvalidInputError, match="image_indices must be a flat list of 1 to"):
        gen.request(image_indices=range(10**12))
    assert time.perf_counter() - t0 < 10  # its length, not its items: going through them would take hours
