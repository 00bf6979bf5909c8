"""The values of a manifest: in range, of the right type, and consistent with each other and
with the graphs' I/O specs. `problems(manifest)` lists what is wrong; Manifest refuses to load
when the list is not empty, so the runtime never allocates from a number it has not checked.
"""
from typing import Any, Optional

from ..arguments import as_int
from ..errors import InvalidInputError
from ..labels import label_problem
from ..model_shape import cache_length, stage_cut
from ..sampler import SamplingParams
from .schema import CACHE_DTYPES, DECODER_DTYPES, DIM_NAMES, DTYPES, KV_TEMPLATES

# generous bounds: far beyond any trained model, far below what would exhaust memory
LIMITS = {"latent side": 1024, "depth": 64, "image side": 16384, "vocab_size": 1 << 20, "dim": 1 << 16,
          "n_layer": 1024, "n_head": 1024, "n_kv_head": 1024, "labels": 1 << 20, "tensor dim": 1 << 31, "opset": 1000}


def _int_in(value: Any, lo: int, hi: int) -> bool:
    return as_int(value, lo, hi) is not None


def _kv_template(value: Any) -> bool:
    """A template takes exactly one layer index: 'new_key_values.%d.key'."""
    return isinstance(value, str) and value.count("%") == 1 and "%d" in value


def _quantization_fact(key: str, value: Any) -> bool:
    """A value of a `quantization` form: a name or an int, or under `precision` the precision ("int8", "int4")
    of each kind of stage MatMul (folders written before it carry none: every MatMul is of the dtype)."""
    if key == "precision":
        return isinstance(value, dict) and all(isinstance(k, str) and v in ("int8", "int4") for k, v in value.items())
    return isinstance(value, (str, int)) and not isinstance(value, bool)


def problems(m: Any) -> list:
    found = []

    def need(ok: bool, text: str) -> bool:
        if not ok:
            found.append(text)
        return ok

    lat, img, cfg = m.latent, m.image, m.model_config
    need(m.dtype in DTYPES, f"dtype {m.dtype!r} is not one of {DTYPES}")
    need(_int_in(m.opset, 1, LIMITS["opset"]), f"opset must be an int in 1..{LIMITS['opset']}, got {m.opset!r}")
    shape_ok = need(isinstance(lat, dict) and isinstance(img, dict) and isinstance(cfg, dict),
                    "latent, image and model_config must be objects")
    if shape_ok:
        shape_ok &= need(all(_int_in(lat.get(k), 1, LIMITS["latent side"]) for k in ("h", "w"))
                         and _int_in(lat.get("depth"), 1, LIMITS["depth"]),
                         f"latent needs ints h, w in 1..{LIMITS['latent side']} and depth in 1..{LIMITS['depth']}, "
                         f"got {lat}")
        shape_ok &= need(all(_int_in(img.get(k), 1, LIMITS["image side"]) for k in ("height", "width")),
                         f"image needs ints height, width in 1..{LIMITS['image side']}, got {img}")
        for key in ("vocab_size", "dim", "n_layer", "n_head", "n_kv_head"):
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
    need(m.decoder_dtype in ("", *DECODER_DTYPES), f"decoder_dtype must be one of {DECODER_DTYPES}, got "
                                                    f"{m.decoder_dtype!r}")
    need(isinstance(m.quantization, dict) and set(m.quantization) <= {"stages", "decoder"}
         and all(isinstance(v, dict) and all(_quantization_fact(k, x) for k, x in v.items())
                 for v in m.quantization.values()),
         f"quantization must map stages or decoder to an object of names and ints (and `precision`, an object of "
         f"names), got {m.quantization!r}")
    need(isinstance(m.producer, dict) and all(isinstance(v, str) for v in m.producer.values()),
         f"producer must be an object of strings (tool -> version), got {m.producer!r}")
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
    # the runtime feeds one condition token, the class, at position 0 (`step.run_position`)
    if not need(_int_in(cfg.get("cls_token_num", 1), 1, 1), "model_config.cls_token_num must be 1 (the runtime "
                f"feeds one class token per image), got {cfg.get('cls_token_num')!r}"):
        return found
    length = cache_length(1, lat["h"] * lat["w"])  # the class token and every cell but the last
    if need(m.cache_length == length, f"cache_length must be {length} (1 class token + latent h*w - 1: the class "
                                      f"token and every cell but the last), got {m.cache_length}"):
        found += _stage_problems(m)
    found += _decoder_problems(m)
    found += _sampler_problems(m)
    return found


def _io(entry: Any, key: str) -> dict:
    """name -> (dtype, shape) of a graph entry's inputs or outputs."""
    return {spec.name: (spec.dtype, spec.shape) for spec in (getattr(entry, key) or [])}


def _layer_ranges(m: Any) -> Optional[list]:
    """The layers of each stage, as the exporter cuts them (`model_shape.stage_cut`); None when
    model_config.pred_head_positions is not that many increasing layer indices."""
    heads, depth, n_layer = m.model_config.get("pred_head_positions"), m.depth, m.model_config["n_layer"]
    if not (isinstance(heads, list) and len(heads) == depth and all(_int_in(p, 0, n_layer - 1) for p in heads)
            and all(a < b for a, b in zip(heads, heads[1:]))):
        return None
    return [list(layers) for layers in stage_cut([int(p) for p in heads])]


def _stage_problems(m: Any) -> list:
    ranges = _layer_ranges(m)
    if ranges is None:
        return [f"model_config.pred_head_positions must be {m.depth} increasing layer indices below n_layer "
                f"{m.model_config['n_layer']}, got {m.model_config.get('pred_head_positions')!r}"]
    if len(m.stages) != m.depth:
        return [f"{len(m.stages)} stages for depth {m.depth}"]
    found = []
    for k, (stage, layers) in enumerate(zip(m.stages, ranges)):
        exact = stage.layers == layers and all(_int_in(i, layers[0], layers[-1]) for i in stage.layers)
        if stage.graph != m.stage_graph(k) or not _int_in(stage.head, k, k) or not exact:
            return [f"stage {k} must be graph {m.stage_graph(k)!r} with head {k} and layers {layers} (cut at "
                    f"model_config.pred_head_positions), got graph {stage.graph!r}, head {stage.head!r}, "
                    f"layers {stage.layers!r}"]
        found += _stage_io_problems(m, stage)
    return found


def _stage_io_problems(m: Any, stage: Any) -> list:
    """Stage graph v2's I/O, as the backends allocate and bind it: the hidden state, the rows' positions
    and cache mask in, logits and hidden state out, each of the stage's layers a fixed past key/value
    [rows, kv_heads, L, head_dim] in and its new row [rows, kv_heads, 1, head_dim] out."""
    cfg, length, rows = m.model_config, m.cache_length, DIM_NAMES[0]
    dim, kv = cfg["dim"], CACHE_DTYPES.get(m.dtype)
    kv_heads, head_dim = cfg["n_kv_head"], dim // cfg["n_head"]
    want = {"inputs": {"hidden": ("float32", [rows, 1, dim]), "positions": ("int64", [rows]),
                       "kv_mask": ("bool", [rows, length])},
            "outputs": {"logits": ("float32", [rows, cfg["vocab_size"]]), "hidden_out": ("float32", [rows, 1, dim])}}
    for layer in stage.layers:
        want["inputs"].update(dict.fromkeys(m.past_names(layer), (kv, [rows, kv_heads, length, head_dim])))
        want["outputs"].update(dict.fromkeys(m.new_names(layer), (kv, [rows, kv_heads, 1, head_dim])))
    return _spec_problems(m, stage.graph, want)


def _decoder_problems(m: Any) -> list:
    lat, img = m.latent, m.image
    rows = DIM_NAMES[0]
    return _spec_problems(m, "decoder", {"inputs": {"codes": ("int64", [rows, lat["h"], lat["w"], lat["depth"]])},
                                         "outputs": {"image": ("uint8", [rows, img["height"], img["width"], 3])}})


def _spec_problems(m: Any, graph: str, want: dict) -> list:
    """What differs between graph's declared inputs/outputs and `want` ({key: {name: (dtype, shape)}})."""
    found = []
    for key, expected in want.items():
        declared = _io(m.files[graph], key)
        wrong = [f"{name} {spec_text(declared.get(name))} (expected {spec_text(expected.get(name))})"
                 for name in [*expected, *(n for n in declared if n not in expected)]
                 if declared.get(name) != expected.get(name)]
        if wrong:
            found.append(f"{graph} {key}: " + ", ".join(wrong[:4]) + (", ..." if len(wrong) > 4 else ""))
    return found


def spec_text(spec: Any) -> str:
    """A (dtype, shape) pair in words, e.g. "float32 ['batch_size', 1, 32]"."""
    return "absent" if spec is None else f"{spec[0]} {spec[1]}"


def _sampler_problems(m: Any) -> list:
    """A setting the folder lacks takes the sampler's default; one this build does not know is refused."""
    defaults = m.sampler_defaults
    if not isinstance(defaults, dict):
        return [f"sampler_defaults must be an object of sampler settings, got {defaults!r:.80}"]
    try:
        SamplingParams.from_stored(defaults).validate(m.model_config["vocab_size"], m.latent["depth"],
                                                      m.null_class is not None)
    except InvalidInputError as e:
        return [f"sampler_defaults: {e}"]
    return []
