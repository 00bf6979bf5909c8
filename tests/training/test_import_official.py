"""`dnd import official`: the published code's own outputs (fixture set a) reproduced through the import,
and official-layout files built here for what that set does not cover."""
import json
import os
import sys
import textwrap
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner

from dnd_sdk import Generator
from dnd_sdk.cli.main import cli
from dnd_sdk.errors import CheckpointError, ManifestError
from dnd_sdk.model_folder.manifest import load_manifest
from dnd_training.checkpoint import load_checkpoint
from dnd_training.importers.official import ImportSettings, imagenet_labels, import_official
from dnd_training.model import ModelArgs, Transformer
from dnd_training.sampling import generate
from dnd_training.tokenizer import RQTokenizer, TokenizerConfig
from dnd_training.torch_files import atomic_torch_save

REPO = Path(__file__).resolve().parents[2]
# shared/ sits beside the clone (CI) or beside the folder of worktrees
FIXTURES = next((p / "shared" / "reference" / "official-fixtures" / "a" for p in (REPO.parent, REPO.parent.parent)
                 if (p / "shared" / "reference" / "official-fixtures" / "a").is_dir()),
                REPO.parent / "shared" / "reference" / "official-fixtures" / "a")
needs_fixtures = pytest.mark.skipif(not FIXTURES.is_dir(), reason=f"official fixtures not found at {FIXTURES}")


@pytest.fixture(scope="module")
def ref():
    return dict(np.load(FIXTURES / "ref.npz"))


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    out = tmp_path_factory.mktemp("official") / "checkpoint.pt"
    settings = ImportSettings(gpt_args=json.loads((FIXTURES / "gpt_args.json").read_text()))
    import_official(FIXTURES / "gpt.pt", FIXTURES / "tokenizer" / "epoch1_model.pt", out, settings)
    return load_checkpoint(out), out


@pytest.fixture(scope="module")
def exported(imported, tmp_path_factory):
    from dnd_export import export_model
    return export_model(imported[1], tmp_path_factory.mktemp("official-export") / "model", dtype="fp32")


@needs_fixtures
def test_teacher_forced_logits_match_the_published_code(imported, ref):
    model = imported[0].build_model()
    with torch.no_grad():
        logits = model(torch.from_numpy(ref["tf_codes"]), torch.from_numpy(ref["tf_class_ids"]))[0]
    assert np.abs(logits.numpy() - ref["tf_logits"]).max() < 1e-4


@needs_fixtures
@pytest.mark.parametrize("cfg", [1, 2])
def test_greedy_codes_match_from_the_reference_sampler_and_the_exported_folder(imported, exported, ref, cfg):
    want = ref[f"gen_cfg{cfg}_codes"].astype(np.int64)  # [B, L, D]
    ids = ref[f"gen_cfg{cfg}_class_ids"]
    model = imported[0].build_model()
    with torch.no_grad():
        codes = generate(model, torch.from_numpy(ids), seed=0, cfg_scale=float(cfg), temperature=0.0)
    np.testing.assert_array_equal(codes.reshape(len(ids), -1, 2).numpy(), want)
    with Generator(exported, backend="onnxruntime-cpu", threads=1) as gen:
        runtime = gen.sample_codes([int(i) for i in ids], seed=0, cfg_scale=float(cfg), temperature=0.0)
        np.testing.assert_array_equal(runtime.reshape(len(ids), -1, 2), want)
        # the decoder graph floors 255 * clamp(x/2 + 1/2) like the published script, so uint8 compares directly
        pixels = np.stack([np.asarray(im) for im in gen.decode(runtime)]).astype(int)
    diff = np.abs(pixels - ref[f"dec_cfg{cfg}_uint8"].astype(int))
    assert diff.max() <= 1 and (diff == 0).mean() >= 0.999


@needs_fixtures
def test_encode_gives_the_published_codes(imported, ref):
    tokenizer = imported[0].build_tokenizer()
    codes = tokenizer.encode(torch.from_numpy(ref["enc_images"]))
    np.testing.assert_array_equal(codes.numpy(), ref["enc_codes"])


def test_imagenet_class_names_are_1000_unique_names():
    names = imagenet_labels()
    assert len(names) == 1000 and len(set(names)) == 1000
    assert all(n and "," not in n and n == n.strip() for n in names)
    assert names[0] == "tench" and names[207] == "golden retriever" and names[999] == "toilet tissue"


# ---------------------------------------------------------------- official-layout files built here

STAND_INS = {
    "omegaconf/__init__.py": "from .dictconfig import DictConfig\n",
    "omegaconf/base.py": """
        import typing
        from dataclasses import dataclass, field
        @dataclass
        class ContainerMetadata:
            ref_type: typing.Any = typing.Any
            key_type: typing.Any = typing.Any
            flags: dict = field(default_factory=dict)
        """,
    "omegaconf/nodes.py": """
        class AnyNode:
            def __init__(self, value):
                self._val = value
        """,
    "omegaconf/dictconfig.py": """
        from .base import ContainerMetadata
        from .nodes import AnyNode
        class DictConfig:
            def __init__(self, content):
                self._metadata = ContainerMetadata()
                self._content = {k: AnyNode(v) for k, v in content.items()}
            def __getstate__(self):
                return dict(self.__dict__)
            def __setstate__(self, state):
                self.__dict__.update(state)
        """,
    "rqvae/__init__.py": "", "rqvae/utils/__init__.py": "",
    "rqvae/utils/dist.py": """
        from dataclasses import dataclass
        @dataclass
        class DistEnv:
            world_size: int = 1
            world_rank: int = 0
        """,
}


def released_style_pickle(tmp_path, payload_fn, path):
    """Write a torch file whose pickle names the training-run classes the published files hold, using
    stand-in classes under those module names (the real packages are not installed)."""
    root = tmp_path / "standins"
    for rel, src in STAND_INS.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(textwrap.dedent(src))
    sys.path.insert(0, str(root))
    try:
        import collections

        from omegaconf import DictConfig
        from rqvae.utils.dist import DistEnv
        torch.save(payload_fn(DictConfig, DistEnv, collections.defaultdict), path)
    finally:
        sys.path.remove(str(root))
        for name in [m for m in sys.modules if m.split(".")[0] in ("omegaconf", "rqvae")]:
            del sys.modules[name]


TOK_CFG = dict(image_height=16, image_width=16, ch=32, ch_mult=[1, 2, 2], num_res_blocks=2, attn_in_mid=True,
               attn_levels=[1], embed_dim=8, z_channels=16, codebook_size=32, depth=2, shared_codebook=False)


def write_tokenizer_files(tmp_path, tok: RQTokenizer, extra=None, config=True):
    folder = tmp_path / "tok"
    folder.mkdir(exist_ok=True)

    def payload(DictConfig, DistEnv, defaultdict):
        stats = defaultdict(list)
        stats["loss"].append(1.0)
        return {"epoch": 3, "state_dict": OrderedDict(tok.state_dict()), "discriminator": OrderedDict(),
                "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4}]}, "scheduler": {"last_epoch": 3},
                "config": DictConfig({"a": 1}), "distenv": DistEnv(), "stats": stats, "any": __import__("typing").Any,
                **(extra or {})}
    released_style_pickle(tmp_path, payload, folder / "epoch3_model.pt")
    if config:
        c = tok.config
        (folder / "config.yaml").write_text(yaml.safe_dump({
            "dataset": {"type": "imagenet"}, "optimizer": {"type": "adam"}, "experiment": {"epochs": 3},
            "gan": {"disc": {}}, "seed": 0, "runtime": {},
            "arch": {"type": "rq-vae", "ema": None, "checkpointing": True,
                     "hparams": {"bottleneck_type": "rq", "embed_dim": c.embed_dim, "n_embed": c.codebook_size,
                                 "latent_shape": [c.grid_h, c.grid_w, c.embed_dim], "code_shape": [c.grid_h, c.grid_w, c.depth],
                                 "shared_codebook": c.shared_codebook, "decay": 0.99, "loss_type": "mse"},
                     "ddconfig": {"double_z": False, "z_channels": c.z_channels, "resolution": c.image_height,
                                  "in_channels": 3, "out_ch": 3, "ch": c.ch, "ch_mult": c.ch_mult,
                                  "num_res_blocks": c.num_res_blocks,
                                  "attn_resolutions": [c.image_height // 2 ** i for i in c.attn_levels], "dropout": 0.0}}}))
    return folder / "epoch3_model.pt"


GPT_ARGS = dict(dim=32, n_layer=4, n_head=4, n_kv_head=2, multiple_of=16, vocab_size=32, num_classes=3,
                class_dropout_prob=0.1, block_size=16, num_pred_heads=2, pred_head_positions=[1, 2],
                share_prediction_heads=1, model_type="c2i", caption_dim=2048, drop_path_rate=0.0)


def official_gpt_state():
    """Our Transformer under the published layout: shared (identical) heads, a layer after the last head."""
    torch.manual_seed(0)
    a = {k: v for k, v in GPT_ARGS.items() if k not in ("block_size", "model_type", "caption_dim", "drop_path_rate")}
    model = Transformer(ModelArgs(**a, grid_h=4, grid_w=4))
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.3)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["output.1.weight"] = state["output.0.weight"].clone()
    model.load_state_dict(state)
    for key in [k for k in state if k.startswith("layers.0.")]:  # layer 3 feeds no head
        state[key.replace("layers.0.", "layers.3.")] = state[key].clone()
    return model.eval(), state


@pytest.fixture(scope="module")
def own_files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("own")
    torch.manual_seed(1)
    tok = RQTokenizer(TokenizerConfig(**TOK_CFG)).eval()
    model, state = official_gpt_state()
    (tmp / "args.json").write_text(json.dumps(GPT_ARGS))
    return tmp, tok, model, state, write_tokenizer_files(tmp, tok)


@pytest.mark.parametrize("layout", ["bare", "model", "module", "state_dict", "prefixed"])
def test_published_layouts_import_to_the_same_model(own_files, layout, tmp_path):
    tmp, tok, model, state, tok_file = own_files
    extras = {"freqs_cis": torch.zeros(17, 4, 2), "layers.0.attention.kv_cache.k_cache": torch.zeros(1, 4, 24, 8)}
    sd = {**state, **extras}
    if layout == "prefixed":
        sd = {f"module._orig_mod.{k}": v for k, v in sd.items()}
    torch.save(sd if layout in ("bare", "prefixed") else {layout: sd, "steps": 10}, tmp_path / "gpt.pt")
    out = import_official(tmp_path / "gpt.pt", tok_file, tmp_path / "ck.pt",
                          ImportSettings(gpt_args=json.loads((tmp / "args.json").read_text())))
    ckpt = load_checkpoint(out)
    assert not ckpt.model_args.share_prediction_heads and ckpt.model_args.n_kv_head == 2
    assert not any(k.startswith("layers.3.") for k in ckpt.model)
    codes, labels = torch.randint(0, 32, (2, 16, 2)), torch.tensor([0, 2])
    with torch.no_grad():
        assert torch.equal(ckpt.build_model()(codes, labels)[0], model(codes, labels)[0])
    imported_tok = ckpt.build_tokenizer()
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    assert torch.equal(imported_tok.encode(images), tok.encode(images))
    with torch.no_grad():
        grid = torch.randint(0, 32, (2, 4, 4, 2))
        assert torch.equal(imported_tok.decode(grid), tok.decode(grid))
    assert ckpt.meta["source"]["gpt"]["file"] == "gpt.pt" and len(ckpt.meta["source"]["tokenizer"]["sha256"]) == 64


def test_unshared_codebooks_look_up_their_own_table():
    torch.manual_seed(0)
    tok = RQTokenizer(TokenizerConfig(**TOK_CFG)).eval()
    books = tok.quantizer.codebooks
    assert books[0] is not books[1] and "encoder.down.1.attn.1.q.weight" in tok.state_dict()
    codes = torch.randint(0, 32, (1, 8, 8, 2))
    z = tok.embed_codes(codes).permute(0, 2, 3, 1)
    torch.testing.assert_close(z, books[0].weight[codes[..., 0]] + books[1].weight[codes[..., 1]])
    assert not books[0].weight[-1].any()  # the padding row stays zero


def test_a_code_running_pickle_is_refused_and_never_runs(own_files, tmp_path):
    tmp, tok, *_ = own_files
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)
    tok_file = write_tokenizer_files(tmp_path, tok, extra={"hook": Evil()})
    torch.save({"model": own_files[3]}, tmp_path / "gpt.pt")
    with pytest.raises(CheckpointError, match="system"):
        import_official(tmp_path / "gpt.pt", tok_file, tmp_path / "ck.pt", ImportSettings(gpt_args=GPT_ARGS))
    assert not marker.exists() and not (tmp_path / "ck.pt").exists()


def _run(args):
    result = CliRunner().invoke(cli, ["import", "official", *map(str, args)])
    return result.exit_code, result.output.strip()


@pytest.mark.parametrize("case", ["swapped", "swapped-reverse", "disagree", "no-config", "truncated", "not-torch",
                                  "no-heads", "t2i"])
def test_bad_input_is_one_line_exit_1_nothing_written(own_files, tmp_path, case):
    tmp, tok, model, state, tok_file = own_files
    gpt = tmp_path / "gpt.pt"
    torch.save({"model": state}, gpt)
    args_file = tmp / "args.json"
    out = tmp_path / "out" / "checkpoint.pt"
    gpt_in, tok_in, extra = gpt, tok_file, ["--gpt-args", args_file]
    if case == "swapped":
        gpt_in, tok_in = tok_file, gpt
    elif case == "swapped-reverse":
        tok_in = gpt
    elif case == "disagree":
        (tmp_path / "bad.json").write_text(json.dumps({**GPT_ARGS, "dim": 48, "n_head": 4}))
        extra = ["--gpt-args", tmp_path / "bad.json"]
    elif case == "no-config":
        lone = tmp_path / "lone"
        lone.mkdir()
        (lone / tok_file.name).write_bytes(tok_file.read_bytes())
        tok_in = lone / tok_file.name
    elif case == "truncated":
        data = gpt.read_bytes()
        gpt.write_bytes(data[:len(data) // 2])
    elif case == "not-torch":
        gpt.write_text("hello")
    elif case == "no-heads":
        extra = ["--num-classes", "3"]
    elif case == "t2i":
        (tmp_path / "t2i.json").write_text(json.dumps({**GPT_ARGS, "model_type": "t2i"}))
        extra = ["--gpt-args", tmp_path / "t2i.json"]
    code, output = _run([gpt_in, tok_in, "-o", out, *extra])
    assert code == 1 and len(output.splitlines()) == 1 and "Traceback" not in output, output
    assert not out.parent.exists()  # refused before anything was written
    expected = {"swapped": "GPT file first", "swapped-reverse": "GPT file first", "disagree": "dim",
                "no-config": "config.yaml", "truncated": "not a readable torch file",
                "not-torch": "not a readable torch file", "no-heads": "n_head", "t2i": "t2i"}[case]
    assert expected in output, output
    if case == "disagree":
        assert "48" in output and "32" in output and "tok_embeddings.weight" in output


class _EditedTokenizer:
    """A tokenizer as write_tokenizer_files reads it, with one state-dict entry replaced."""

    def __init__(self, tok, key, value):
        self.config, self._state = tok.config, {**tok.state_dict(), key: value}

    def state_dict(self):
        return self._state


@pytest.mark.parametrize("case, fragment", [
    ("gpt 0-dim", "tok_embeddings.weight has shape [], but the published layout has a 2-dim tensor there"),
    ("gpt 1-dim", "layers.0.attention.wqkv.weight has shape [64], but the published layout has a 2-dim tensor"),
    ("tokenizer 0-dim", "encoder.conv_in.weight has shape [], but the published layout has a 4-dim tensor there"),
    ("codebook 3-dim", "quantizer.codebooks.0.weight has shape [33, 8, 1], but the published layout has a 2-dim"),
    ("yaml resolution", "ddconfig.resolution = 'sixteen' is not an integer"),
    ("yaml ch_mult", "ddconfig.ch_mult = ['1', 2, 2] is not a list of integers"),
    ("yaml code_shape", "hparams.code_shape = 2 is not a list of integers or null"),
    ("yaml decay", "hparams.decay = 'fast' is not a finite number"),
    ("yaml hparams", "arch.hparams and arch.ddconfig must be mappings"),
    ("gpt-args dim", "--gpt-args: dim = '32' is not an integer"),
    ("gpt-args positions", "--gpt-args: pred_head_positions = 2 is not a list of integers"),
])
def test_a_value_of_the_wrong_rank_or_type_is_one_line_naming_it(own_files, tmp_path, case, fragment):
    tmp, tok, model, state, tok_file = own_files
    gpt_state, args = dict(state), dict(GPT_ARGS)
    if case == "gpt 0-dim":
        gpt_state["tok_embeddings.weight"] = torch.tensor(1.0)
    elif case == "gpt 1-dim":
        gpt_state["layers.0.attention.wqkv.weight"] = torch.zeros(64)
    elif case == "tokenizer 0-dim":
        tok_file = write_tokenizer_files(tmp_path, _EditedTokenizer(tok, "encoder.conv_in.weight", torch.tensor(0.5)))
    elif case == "codebook 3-dim":
        book = tok.state_dict()["quantizer.codebooks.0.weight"]
        tok_file = write_tokenizer_files(tmp_path, _EditedTokenizer(tok, "quantizer.codebooks.0.weight", book[..., None]))
    elif case.startswith("yaml"):
        tok_file = write_tokenizer_files(tmp_path, tok)
        config = yaml.safe_load((tok_file.parent / "config.yaml").read_text())
        hp, dd = config["arch"]["hparams"], config["arch"]["ddconfig"]
        {"yaml resolution": lambda: dd.update(resolution="sixteen"), "yaml ch_mult": lambda: dd.update(ch_mult=["1", 2, 2]),
         "yaml code_shape": lambda: hp.update(code_shape=2), "yaml decay": lambda: hp.update(decay="fast"),
         "yaml hparams": lambda: config["arch"].update(hparams=[1, 2])}[case]()
        (tok_file.parent / "config.yaml").write_text(yaml.safe_dump(config))
    else:
        args.update({"gpt-args dim": {"dim": "32"}, "gpt-args positions": {"pred_head_positions": 2}}[case])
    torch.save({"model": gpt_state}, tmp_path / "gpt.pt")
    (tmp_path / "args.json").write_text(json.dumps(args))
    out = tmp_path / "out" / "checkpoint.pt"
    code, output = _run([tmp_path / "gpt.pt", tok_file, "-o", out, "--gpt-args", tmp_path / "args.json"])
    assert code == 1 and len(output.splitlines()) == 1 and fragment in output, output
    assert not out.parent.exists()


def test_cli_import_with_release_labels_and_sampler_defaults(own_files, tmp_path):
    tmp, tok, model, state, tok_file = own_files
    torch.save({"model": state}, tmp_path / "gpt.pt")
    (tmp_path / "labels.txt").write_text("cat\ndog\nbird\n")
    out = tmp_path / "ck.pt"
    code, output = _run([tmp_path / "gpt.pt", tok_file, "-o", out, "--gpt-args", tmp / "args.json",
                         "--labels", tmp_path / "labels.txt"])
    assert code == 0, output
    assert load_checkpoint(out).labels == ["cat", "dog", "bird"]
    (tmp_path / "labels.txt").write_text("cat\ndog\ncat\n")
    code, output = _run([tmp_path / "gpt.pt", tok_file, "-o", tmp_path / "b.pt", "--gpt-args", tmp / "args.json",
                         "--labels", tmp_path / "labels.txt"])
    assert code == 1 and "unique" in output and not (tmp_path / "b.pt").exists()


@needs_fixtures
def test_repeated_or_comma_labels_are_refused_when_a_checkpoint_or_folder_loads(imported, exported, tmp_path):
    raw = torch.load(imported[1], weights_only=True)
    for labels, word in ((["a"] * 10, "unique"), (["a,b"] + [str(i) for i in range(9)], "comma")):
        atomic_torch_save({**raw, "labels": labels}, tmp_path / "bad.pt")
        with pytest.raises(CheckpointError, match=word):
            load_checkpoint(tmp_path / "bad.pt")
    manifest = json.loads((exported / "manifest.json").read_text())
    folder = tmp_path / "model"
    folder.mkdir()
    for f in exported.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    (folder / "manifest.json").write_text(json.dumps({**manifest, "labels": ["x"] * 10}))
    with pytest.raises(ManifestError, match="unique"):
        load_manifest(folder)


@pytest.mark.parametrize("mmap", [False, True])  # dnd-export reads with mmap; the migrated codebook is not the file's
def test_tokenizer_files_from_before_the_published_layout_still_load(mmap):
    raw = torch.load(REPO / "models" / "words" / "checkpoint.pt", weights_only=True)
    assert "quantizer.codebook" in raw["tokenizer"]  # the shipped file keeps the old layout
    tok = load_checkpoint(REPO / "models" / "words" / "checkpoint.pt", mmap=mmap).build_tokenizer()
    assert torch.equal(tok.quantizer.codebooks[0].weight[:-1], raw["tokenizer"]["quantizer.codebook"])
    assert all(b is tok.quantizer.codebooks[0] for b in tok.quantizer.codebooks)
