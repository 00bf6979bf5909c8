"""Import and export of published-size DnD-Transformers: time, peak memory, folder size, one image on CPU.

    .venv/bin/python scripts/bench_official_scale.py --preset GPT-XXL  --workdir /big/disk/bench   # ~12 GiB peak
    .venv/bin/python scripts/bench_official_scale.py --preset GPT-XXXL --workdir /big/disk/bench
    .venv/bin/python scripts/bench_official_scale.py --preset GPT-B                                # a quick check

Random weights in the exact published layout (ImageNet 256 release: V 16384, heads after layers
n_layer-9 and n_layer-1 = 39 and 47 for the 48-layer presets, 1001 class rows, 16x16x2 codes) and a
tokenizer with the released config (ch 128, ch_mult 1,1,2,2,4, two res blocks, shared 16384 x 256
codebook). Every step runs in a child process of its own; its peak RSS is that child's ru_maxrss
(os.wait4), so the figures are of `dnd import official` and `dnd-export` themselves. Prints JSON.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PRESETS = {"GPT-B": (12, 12, 768), "GPT-L": (24, 16, 1024), "GPT-XL": (36, 20, 1280),
           "GPT-XXL": (48, 24, 1536), "GPT-XXXL": (48, 32, 2048)}
RELEASE = {"GPT-XXL": "imagenet256-xxl", "GPT-XXXL": "imagenet256-xxxl"}
V, CLASSES, GRID, DEPTH = 16384, 1000, 16, 2
TOKENIZER = dict(image_height=256, image_width=256, ch=128, ch_mult=[1, 1, 2, 2, 4], num_res_blocks=2,
                 attn_in_mid=True, z_channels=256, embed_dim=256, codebook_size=V, depth=DEPTH)


def heads(n_layer: int) -> list:
    return [n_layer - 9, n_layer - 1]


def write_files(preset: str, folder: Path) -> None:
    """The GPT file ({"model": state_dict}, fp32) and the tokenizer folder (epoch file + config.yaml)."""
    import torch
    import yaml

    from dnd_training.tokenizer import RQTokenizer, TokenizerConfig
    n_layer, _, d = PRESETS[preset]
    ffn = 256 * -(-int(8 * d / 3) // 256)
    g = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=g) * 0.02
    sd = {"cls_embedding.embedding_table.weight": rand(CLASSES + 1, d), "tok_embeddings.weight": rand(V, d)}
    for i in range(n_layer):
        sd.update({f"layers.{i}.attention.wqkv.weight": rand(3 * d, d), f"layers.{i}.attention.wo.weight": rand(d, d),
                   f"layers.{i}.feed_forward.w1.weight": rand(ffn, d), f"layers.{i}.feed_forward.w3.weight": rand(ffn, d),
                   f"layers.{i}.feed_forward.w2.weight": rand(d, ffn),
                   f"layers.{i}.attention_norm.weight": torch.ones(d), f"layers.{i}.ffn_norm.weight": torch.ones(d)})
    for k in range(DEPTH):
        sd.update({f"norm.{k}.weight": torch.ones(d), f"output.{k}.weight": rand(V, d)})
    torch.save({"model": sd}, folder / "gpt.pt")
    del sd
    tok_dir = folder / "2d_tokenzier_imagenet"
    tok_dir.mkdir(exist_ok=True)
    torch.manual_seed(0)
    tok = RQTokenizer(TokenizerConfig(**TOKENIZER))
    torch.save({"epoch": 1, "state_dict": tok.state_dict()}, tok_dir / "epoch1_model.pt")
    (tok_dir / "config.yaml").write_text(yaml.safe_dump({
        "dataset": {"type": "imagenet", "transforms": {"type": "imagenet256x256"}}, "optimizer": {"type": "adam"},
        "experiment": {"epochs": 10, "batch_size": 16}, "gan": {"disc": {"arch": {"in_channels": 3}}}, "seed": 0,
        "runtime": {"distenv": None},
        "arch": {"type": "rq-vae", "code_hier": 1, "ema": None, "checkpointing": True,
                 "hparams": {"bottleneck_type": "rq", "embed_dim": 256, "n_embed": V, "latent_shape": [GRID, GRID, 256],
                             "code_shape": [GRID, GRID, DEPTH], "shared_codebook": True, "decay": 0.99,
                             "restart_unused_codes": True, "loss_type": "mse", "latent_loss_weight": 0.25,
                             "use_padding_idx": False, "masked_dropout": 0.0},
                 "ddconfig": {"double_z": False, "z_channels": 256, "resolution": 256, "in_channels": 3, "out_ch": 3,
                              "ch": 128, "ch_mult": [1, 1, 2, 2, 4], "num_res_blocks": 2, "attn_resolutions": [8],
                              "dropout": 0.0}}}))


def one_image(model_dir: str, threads: int) -> dict:
    from dnd_sdk import Generator
    t0 = time.perf_counter()
    gen = Generator(model_dir, backend="onnxruntime-cpu", threads=threads)
    opened = time.perf_counter() - t0
    t0 = time.perf_counter()
    gen.sample(labels=[207], seed=0, batch_size=1)
    return {"open_s": round(opened, 1), "s_per_image": round(time.perf_counter() - t0, 1)}


def measured(cmd: list) -> dict:
    """Run cmd as a child; its wall time, peak RSS (GiB, its own ru_maxrss) and last stdout line."""
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)  # the rusage of this one child
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        stdout, stderr = out.read().strip(), err.read()
    if proc.returncode != 0:
        sys.exit(f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{stderr[-2000:]}")
    return {"wall_s": round(time.perf_counter() - t0, 1), "peak_rss_gib": round(usage.ru_maxrss / 2**20, 2),
            "out": stdout.splitlines()[-1] if stdout else ""}


def param_bytes(checkpoint: Path, dtype: str) -> int:
    """Bytes of what the folder must hold: transformer (kept layers) + decoder side of the tokenizer."""
    import torch
    raw = torch.load(checkpoint, mmap=True, weights_only=True)  # shapes only; no weight is read
    size = {"fp32": 4, "fp16": 2, "bf16": 2}[dtype]
    n = sum(t.numel() for t in raw["model"].values())
    tok = raw["tokenizer"]
    n += sum(t.numel() for k, t in tok.items() if k.startswith(("decoder.", "post_quant_conv.")))
    n += tok["quantizer.codebooks.0.weight"].numel()  # one table when shared
    return n * size


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="GPT-XXL")
    p.add_argument("--dtype", action="append", choices=["fp16", "fp32"],
                   help="export dtypes [default: fp16, plus fp32 for GPT-XXL]")
    p.add_argument("--workdir", type=Path, help="where the files go (needs ~3x the fp32 model size on disk)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads for the one-image run")
    p.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:  # a measured step of a run
        if a.child[0] == "write":
            write_files(a.child[1], Path(a.child[2]))
        else:
            print(json.dumps(one_image(a.child[1], int(a.child[2]))))
        return
    dtypes = a.dtype or (["fp16", "fp32"] if a.preset == "GPT-XXL" else ["fp16"])
    work = a.workdir or Path(tempfile.mkdtemp(prefix="dnd-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    bin_dir, me = Path(sys.executable).parent, [sys.executable, __file__]
    n_layer = PRESETS[a.preset][0]
    report = {"preset": a.preset, "layout": {"vocab": V, "heads": heads(n_layer), "class_rows": CLASSES + 1,
                                             "grid": GRID, "depth": DEPTH}, "workdir": str(work)}
    report["write"] = measured([*me, "--preset", a.preset, "--child", "write", a.preset, str(work)])
    settings = (["--release", RELEASE[a.preset]] if a.preset in RELEASE else
                ["--preset", a.preset, "--pred-head-positions", ",".join(map(str, heads(n_layer))),
                 "--num-classes", str(CLASSES), "--class-dropout-prob", "0.1"])
    ckpt = work / "checkpoint.pt"
    report["import"] = measured([str(bin_dir / "dnd"), "import", "official", str(work / "gpt.pt"),
                                 str(work / "2d_tokenzier_imagenet" / "epoch1_model.pt"), "-o", str(ckpt), "--force",
                                 *settings])
    report["import"]["checkpoint_bytes"] = ckpt.stat().st_size
    for dtype in dtypes:
        folder = work / f"model-{dtype}"
        step = measured([str(bin_dir / "dnd-export"), str(ckpt), "-o", str(folder), "--dtype", dtype, "--force"])
        folder_bytes = sum(f.stat().st_size for f in folder.iterdir())
        step.update(folder_bytes=folder_bytes, folder_over_params=round(folder_bytes / param_bytes(ckpt, dtype), 4))
        image = measured([*me, "--child", "image", str(folder), str(a.threads)])
        step["one_image_cpu"] = {**json.loads(image.pop("out")), **image}
        report[f"export_{dtype}"] = step
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
