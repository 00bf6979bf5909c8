"""The body of `POST /v1/images/generations` (OpenAI's Images API) read into a Generator request.

`prompt` is a label name or class id of the model; `n` images of it are made, image j with image
index j, so that its PNG is the one `/v1/images` and `dnd generate` give for the same label, seed,
settings and index. The sampler settings and `seed` are extensions of OpenAI's body, validated by
`Generator.request` as everywhere else. OpenAI's other keys are accepted where this model can honour
them, and a value it cannot honour is a 400 naming the key.
"""
from dataclasses import dataclass

from .arguments import integer, shown
from .errors import InvalidInputError
from .generator import Generator, Request
from .sampler import SETTINGS, SamplingParams
from .serve_steps import SERVER_FLAGS, Refusal, in_words, parse_json

IGNORED = ("user", "moderation")  # OpenAI fields with no meaning here: accepted and ignored
# keys that take one value only here (their default); any other is a 400 naming the key
ONLY = {"quality": "auto", "background": "auto", "output_format": "png", "response_format": "b64_json"}
REFUSED = ("style", "output_compression")  # no value of these can be honoured
KEYS = ("prompt", "model", "n", "size", "stream", "partial_images", "seed", *SETTINGS, *IGNORED, *ONLY, *REFUSED)
MAX_PARTIAL_IMAGES = 3  # OpenAI's range, 0..3
# Generator.request's names -> the body's: in error messages (where "labels" is prose as often as a name, and no
# message reached here names it: prompt is checked first), and as the key an error names
WORDS = {"num": "n", **SERVER_FLAGS}
KEY_OF = {"labels": "prompt", "num": "n"}
EXAMPLE = '{"prompt": "cat", "n": 1}'


@dataclass(frozen=True)
class Generation:
    """A validated body: the Generator request, and how to answer it."""
    request: Request
    stream: bool
    partial_images: int


def image_size(gen: Generator) -> str:
    """The model's image size as OpenAI writes it, "WxH"."""
    return f"{int(gen.manifest.image['width'])}x{int(gen.manifest.image['height'])}"


def read_generation(gen: Generator, raw: bytes, model_id: str) -> Generation:
    """`raw`, the body, as a Generation; or Refusal (400, or 404 for another model) naming the key at fault."""
    try:
        body = parse_json(raw, EXAMPLE)
    except InvalidInputError as e:
        raise Refusal(400, str(e)) from None
    if not isinstance(body, dict):
        raise Refusal(400, f"the body must be a JSON object, e.g. {EXAMPLE}; got {shown(body)}")
    unknown = sorted(set(body) - set(KEYS))
    if unknown:
        raise Refusal(400, f"unknown key(s) {shown(unknown)}; the keys are {', '.join(KEYS)}", param=unknown[0])
    given = {k: v for k, v in body.items() if v is not None}  # null: not given, as the openai clients mean it
    _check_openai_keys(gen, given, model_id)
    prompt = given.get("prompt")
    if isinstance(prompt, bool) or not isinstance(prompt, (str, int)):
        raise Refusal(400, f"prompt must be a label name or class id of this model, e.g. {gen.labels[0]!r}; got "
                           f"{shown(prompt)}", param="prompt")
    try:
        sampling = SamplingParams(**{k: v for k, v in given.items() if k in SETTINGS})
        request = gen.request(labels=[prompt], num=given.get("n", 1), seed=given.get("seed", 0), sampling=sampling)
        stream = given.get("stream", False)
        if not isinstance(stream, bool):
            raise InvalidInputError(f"stream must be true or false, got {shown(stream)}", ["stream"])
        partial_images = integer(given.get("partial_images", 0), "partial_images", 0, MAX_PARTIAL_IMAGES)
        if partial_images and not stream:
            raise InvalidInputError("partial_images come as events of a stream; ask for stream: true as well",
                                    ["partial_images"])
    except InvalidInputError as e:
        param = next((KEY_OF.get(name, name) for name in e.names if KEY_OF.get(name, name) in KEYS), None)
        raise Refusal(400, in_words(e, WORDS), param=param) from None
    return Generation(request, stream, partial_images)


def unknown_model(model: object) -> Refusal:
    """OpenAI's answer for a model this server does not serve: 404, `model_not_found`."""
    name = model if isinstance(model, str) else shown(model)
    return Refusal(404, f"The model '{name}' does not exist", param="model", code="model_not_found")


def _check_openai_keys(gen: Generator, given: dict, model_id: str) -> None:
    """OpenAI's keys beyond the request itself: the model, the size and what this model cannot honour."""
    model = given.get("model", model_id)
    if model != model_id:
        raise unknown_model(model)
    size = given.get("size", "auto")
    if size not in ("auto", image_size(gen)):
        raise Refusal(400, f"size must be 'auto' or this model's size {image_size(gen)!r}, got {shown(size)}",
                      param="size")
    if given.get("response_format") == "url":
        raise Refusal(400, "response_format 'url' is not served: this server keeps no files, it returns each "
                           "image in the response; use response_format 'b64_json' (the default)",
                      param="response_format")
    for key, only in ONLY.items():
        if given.get(key, only) != only:
            raise Refusal(400, f"{key} must be {only!r} for this model, got {shown(given[key])}", param=key)
    for key in REFUSED:
        if key in given:
            raise Refusal(400, f"{key} cannot be honoured by this model; leave it out", param=key)
