"""SamplingParams is the schema of the sampler's settings: the manifest's keys and defaults, the public
signatures, the command-line flags and the HTTP keys all come from its fields, and a request is resolved
from the manifest alone."""
import inspect
import json
import shutil
from dataclasses import replace

import pytest

from dnd_sdk import Generator
from dnd_sdk.batch import BatchJob, plan_run
from dnd_sdk.cli.generate import generate
from dnd_sdk.errors import InvalidInputError, ManifestError
from dnd_sdk.images_request import ImagesRequest
from dnd_sdk.model_folder.manifest import load_manifest
from dnd_sdk.requests import ModelFacts, resolve_request
from dnd_sdk.sampler import DEFAULTS, SETTINGS, STORED_SETTINGS, SamplingParams, settings_in


def _keywords(function):
    return {name: p for name, p in inspect.signature(function).parameters.items() if p.kind is p.KEYWORD_ONLY}


@pytest.mark.parametrize("method", [Generator.request, Generator.sample, Generator.sample_codes])
def test_public_calls_name_every_setting_and_take_no_kwargs(method):
    """The explicit signatures and the schema agree: a field added to SamplingParams fails here until each
    public call names it (and settings_in would fail at the first call)."""
    params = inspect.signature(method).parameters.values()
    assert not [p for p in params if p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
    keywords = _keywords(method)
    assert set(SETTINGS) <= set(keywords)
    assert all(keywords[name].default is None for name in SETTINGS)  # None: the model's default
    assert {"seed", "sampling", "batch_size", "image_indices", "start"} <= set(keywords)
    if method is not Generator.request:
        assert "timeout" in keywords


def test_settings_in_takes_the_settings_of_a_signature_and_misses_none():
    arguments = {"self": None, "seed": 0, **dict.fromkeys(SETTINGS), "cfg_scale": 2.0, "top_k": 0}  # a call's locals()
    assert settings_in(arguments) == {"cfg_scale": 2.0, "top_k": 0}
    with pytest.raises(KeyError):
        settings_in({"seed": 0, "cfg_scale": None})  # a signature lacking settings


def test_a_setting_left_unset_takes_the_models_default_then_the_samplers():
    model = SamplingParams(cfg_scale=2.0, temperature=0.5, top_k=3, top_p=0.9)
    assert SamplingParams(top_k=7).with_defaults(model) == SamplingParams(cfg_scale=2.0, temperature=0.5, top_k=7,
                                                                          top_p=0.9)
    assert SamplingParams.from_stored({"cfg_scale": 2.0}) == replace(DEFAULTS, cfg_scale=2.0)
    assert DEFAULTS.temperature == 1.0 and DEFAULTS.top_k == 0 and DEFAULTS.head_temperatures is None
    assert SamplingParams().validate(64, 2, True) == DEFAULTS == SamplingParams.from_stored({})
    assert DEFAULTS.stored() == {name: getattr(DEFAULTS, name) for name in STORED_SETTINGS}
    with pytest.raises(InvalidInputError, match=r"unknown sampler setting\(s\) \['head_temperatures', 'later'\]"):
        SamplingParams.from_stored({"later": 0.1, "head_temperatures": [1, 1]})  # a request's setting is no default


def test_a_dict_for_sampling_is_refused_saying_what_to_pass(gen):
    with pytest.raises(InvalidInputError, match=r"sampling must be a SamplingParams, e\.g\. sampling=SamplingParams\("):
        gen.sample(num=1, sampling={"cfg_scale": 2.0})
    with pytest.raises(InvalidInputError, match="not both"):
        gen.sample(num=1, sampling=SamplingParams(top_k=3), cfg_scale=2.0)


def test_sampling_leaves_what_it_does_not_set_to_the_model(gen):
    """The tiny model's cfg_scale default is 2: a SamplingParams that sets only top_k keeps it."""
    assert gen.manifest.sampler_defaults["cfg_scale"] == 2.0
    req = gen.request(num=2, sampling=SamplingParams(top_k=5))
    assert (req.params.cfg_scale, req.params.top_k) == (2.0, 5)
    assert req.params == gen.request(num=2, top_k=5).params
    assert (gen.sample_codes(num=2, sampling=SamplingParams(top_k=5)) == gen.sample_codes(num=2, top_k=5)).all()


def _folder(tiny_model_dir, tmp_path, edit):
    folder = shutil.copytree(tiny_model_dir, tmp_path / "model")
    path = folder / "manifest.json"
    d = json.loads(path.read_text())
    edit(d["sampler_defaults"])
    path.write_text(json.dumps(d))
    return folder


def test_a_folder_without_a_sampler_setting_loads_with_its_default(tiny_model_dir, tmp_path):
    """A folder written before a setting existed lacks its entry: the sampler's default fills it."""
    folder = _folder(tiny_model_dir, tmp_path, lambda defaults: defaults.pop("top_p"))
    assert load_manifest(folder).sampler_defaults == {**DEFAULTS.stored(), "cfg_scale": 2.0}  # the folder's own kept
    with Generator(folder, threads=1) as gen:
        assert gen.request(num=1).params.top_p == DEFAULTS.top_p
        assert len(gen.sample(num=1)) == 1


def test_a_folder_with_an_unknown_sampler_setting_is_refused_naming_it(tiny_model_dir, tmp_path):
    """A folder from a newer dnd-sdk, whose sampler has a setting this one lacks."""
    folder = _folder(tiny_model_dir, tmp_path, lambda defaults: defaults.update(later_setting=0.05))
    with pytest.raises(ManifestError, match=r"sampler_defaults: unknown sampler setting\(s\) \['later_setting'\]"):
        Generator(folder, threads=1)


def test_a_request_is_resolved_from_the_manifest_alone(tiny_model_dir, gen):
    """No backend: the same request as the Generator's, less the batch size only a backend decides."""
    model = ModelFacts.of(load_manifest(tiny_model_dir, verify=False))
    pure = resolve_request(model, ["fish", 1], 3, seed=4, sampling=SamplingParams(temperature=0.5))
    live = gen.request(["fish", 1], 3, seed=4, temperature=0.5)
    assert pure.labels.tolist() == live.labels.tolist() == [3, 1, 3]
    assert pure.indices.tolist() == live.indices.tolist() and pure.seed == live.seed == 4
    assert pure.params == live.params and pure.batch_size is None
    assert live.batch_size == gen.scheduler.max_rows // 2  # guided: two rows an image
    fitted = gen.fit(pure)
    assert (fitted.params, fitted.batch_size) == (live.params, live.batch_size)
    with pytest.raises(InvalidInputError, match="unknown label 'zebra'"):
        resolve_request(model, ["zebra"])
    job = BatchJob(num=3, labels=["fish", "1"], seed=4, sampling=SamplingParams(temperature=0.5))
    plan = plan_run(load_manifest(tiny_model_dir, verify=False), job)
    assert plan.labels.tolist() == [3, 1, 3] and plan.identity["sampling"] == live.params.as_dict()


def test_the_http_keys_are_the_requests_own_and_the_settings():
    assert ImagesRequest.keys() == ("labels", "num", "seed", "start", "image_indices", *SETTINGS)
    asked = ImagesRequest.from_json({"labels": ["cat"], "num": 2, "cfg_scale": 2.0, "head_temperatures": [0, 1]})
    assert (asked.labels, asked.num, asked.seed, asked.start) == (["cat"], 2, 0, 0)
    assert asked.sampling == SamplingParams(cfg_scale=2.0, head_temperatures=[0, 1])
    for body, got in [({"batch_size": 4}, "['batch_size']"), ({"sampling": {}}, "['sampling']"), ([1], "[1]")]:
        with pytest.raises(InvalidInputError) as error:
            ImagesRequest.from_json(body)
        assert str(error.value) == (f"the body must be a JSON object of {', '.join(ImagesRequest.keys())}; got {got}")


def test_every_setting_has_its_flag():
    """`dnd generate` offers every setting as --name-with-dashes."""
    flags = {o for p in generate.params for o in p.opts}
    assert {"--" + name.replace("_", "-") for name in SETTINGS} <= flags


def test_the_ray_driver_plans_from_the_manifest_before_any_cluster(tiny_model_dir, tmp_path, monkeypatch):
    """A bad job is refused, and a good one planned, before ray is even imported: no worker makes the plan."""
    from dnd_sdk import ray_batch

    class ClusterReached(Exception):
        pass

    def no_cluster(address):
        raise ClusterReached
    monkeypatch.setattr(ray_batch, "_import_ray", no_cluster)
    with pytest.raises(InvalidInputError, match="unknown label 'zebra'"):
        ray_batch.run_batch_ray(tiny_model_dir, tmp_path / "a", BatchJob(num=2, labels=["zebra"]), progress=False)
    with pytest.raises(ClusterReached):
        ray_batch.run_batch_ray(tiny_model_dir, tmp_path / "b", BatchJob(num=2), progress=False)
    assert not hasattr(ray_batch._Worker, "plan")  # a worker only samples


def test_settings_are_given_by_keyword_only():
    with pytest.raises(TypeError):
        SamplingParams(2.0)  # a position would shift values once a field is inserted before it
