"""The values of a manifest: in range, of the right type, and consistent with each other and
with the graphs' I/O specs. `problems(manifest)` lists what is wrong; Manifest refuses to load
when the list is not empty, so the runtime never allocates from a number it has not checked.
"""
from .errors import InvalidInputError
from .labels import label_problem
from .manifest_schema import BACKEND_NAMES, DECODER_DTYPES, DTYPES, KV_TEMPLATES, SAMPLER_KEYS
from .sampler import SamplingParams

# generous bounds: far beyond any trained model, far below what would exhaust memory
LIMITS = {"latent side": 1024, "depth": 64, "image side": 16384, "vocab_size": 1 << 20, "dim": 1 << 16,
          "n_layer": 1024, "labels": 1 << 20, "tensor dim": 1 << 31}


def _int_in(value, lo: int, hi: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi


def _kv_template(value) -> bool:
    """A template takes exactly one layer index: 'new_key_values.%d.key'."""
    return isinstance(value, str) and value.count("%") == 1 and "%d" in value


def problems(m) -> list:
    found = []

    def need(ok: bool, text: str) -> bool:
        if not ok:
            found.append(text)
        return ok

    lat, img, cfg = m.latent, m.image, m.model_config
    need(m.dtype in DTYPES, f"dtype {m.dtype!r} is not one of {DTYPES}")
    shape_ok = need(isinstance(lat, dict) and isinstance(img, dict) and isinstance(cfg, dict),
                    "latent, image and model_config must be objects")
    if shape_ok:
        shape_ok &= need(all(_int_in(lat.get(k), 1, LIMITS["latent side"]) for k in ("h", "w"))
                         and _int_in(lat.get("depth"), 1, LIMITS["depth"]),
                         f"latent needs ints h, w in 1..{LIMITS['latent side']} and depth in 1..{LIMITS['depth']}, "
                         f"got {lat}")
        shape_ok &= need(all(_int_in(img.get(k), 1, LIMITS["image side"]) for k in ("height", "width")),
                         f"image needs ints height, width in 1..{LIMITS['image side']}, got {img}")
        for key in ("vocab_size", "dim", "n_layer"):
            shape_ok &= need(_int_in(cfg.get(key), 1 + (key == "vocab_size"), LIMITS[key]),
                             f"model_config.{key} must be an int in {1 + (key == 'vocab_size')}..{LIMITS[key]}, "
                             f"got {cfg.get(key)!r}")
    labels_ok = need(isinstance(m.labels, list) and 0 < len(m.labels) <= LIMITS["labels"]
                     and all(isinstance(x, str) and x for x in m.labels),
                     "labels must be a non-empty list of non-empty strings")
    if labels_ok:
        need(label_problem(m.labels) is None, str(label_problem(m.labels)))
        need(m.null_class is None or _int_in(m.null_class, len(m.labels), len(m.labels)),
             f"null_class must be null or {len(m.labels)} (the number of labels), got {m.null_class!r}")
    need(isinstance(m.forms, dict) and set(m.forms) <= {"stages", "decoder"} and "stages" in m.forms
         and all(isinstance(v, list) and v and set(v) <= set(BACKEND_NAMES) for v in m.forms.values()),
         f"forms needs stages (and may have decoder), each a non-empty list of backends among {BACKEND_NAMES}, "
         f"got {m.forms!r}")
    need(m.decoder_dtype in ("", *DECODER_DTYPES), f"decoder_dtype must be one of {DECODER_DTYPES}, got "
                                                    f"{m.decoder_dtype!r}")
    need(_int_in(m.cache_length, 1, LIMITS["tensor dim"]),
         f"cache_length must be an int in 1..{LIMITS['tensor dim']}, got {m.cache_length!r}")
    need(isinstance(m.kv, dict) and set(m.kv) == set(KV_TEMPLATES) and all(_kv_template(t) for t in m.kv.values()),
         f"kv needs {sorted(KV_TEMPLATES)}, each a name with one %d, got {m.kv!r}")
    absent = [n for n in [s.graph for s in m.stages] + ["decoder", "embeddings"] if n not in m.files]
    need(not absent, f"files lacks entries {absent}")
    need(all(_int_in(d, 1, LIMITS["tensor dim"]) for e in m.files.values()
             for spec in (e.inputs or []) + (e.outputs or []) for d in spec.shape if not isinstance(d, str)),
         f"tensor dims must be ints in 1..{LIMITS['tensor dim']}")
    if not shape_ok or found:
        return found  # the checks below read these values
    depth = lat["depth"]
    if need(len(m.stages) == depth and [s.head for s in m.stages] == list(range(depth)),
            f"{len(m.stages)} stages for depth {depth}, heads must be 0..{depth - 1}"):
        found += _stage_problems(m)
    found += _sampler_problems(m)
    return found


def _io(entry, key: str) -> dict:
    return {spec.name: spec.shape for spec in (getattr(entry, key) or [])}


def _stage_problems(m) -> list:
    found, seen = [], []
    n_layer, vocab, dim = m.model_config["n_layer"], m.model_config["vocab_size"], m.model_config["dim"]
    for stage in m.stages:
        ins, outs = _io(m.files[stage.graph], "inputs"), _io(m.files[stage.graph], "outputs")
        bad = [i for i in stage.layers if not 0 <= i < n_layer or i in seen]
        if bad:
            found.append(f"stage {stage.graph} names layers {bad}, outside 0..{n_layer - 1} or taken by another stage")
        seen += stage.layers
        missing = [name for i in stage.layers if i not in bad
                   for name in (*m.past_names(i), *m.new_names(i)) if name not in ins and name not in outs]
        if missing:
            found.append(f"stage {stage.graph} has no KV-cache tensors {missing[:4]} for its layers")
        if outs.get("logits", [None])[-1:] != [vocab] or ins.get("hidden", [None])[-1:] != [dim]:
            found.append(f"stage {stage.graph}: logits [.., {vocab}] and hidden [.., {dim}] do not match its "
                         "I/O specs")
    codes, image = _io(m.files["decoder"], "inputs").get("codes"), _io(m.files["decoder"], "outputs").get("image")
    lat, img = m.latent, m.image
    if codes != ["batch_size", lat["h"], lat["w"], lat["depth"]] \
            or image != ["batch_size", img["height"], img["width"], 3]:
        found.append(f"decoder codes {codes} / image {image} do not match latent {lat} and image {img}")
    return found


def _sampler_problems(m) -> list:
    defaults = m.sampler_defaults
    keys = SAMPLER_KEYS
    if not isinstance(defaults, dict) or not set(keys) <= set(defaults):
        return [f"sampler_defaults needs {keys}, has {sorted(defaults) if isinstance(defaults, dict) else defaults}"]
    try:
        SamplingParams(**{k: defaults[k] for k in keys}).validate(m.model_config["vocab_size"], m.latent["depth"],
                                                                  m.null_class is not None)
    except InvalidInputError as e:
        return [f"sampler_defaults: {e}"]
    return []
