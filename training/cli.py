"""`dnd train ...`: the three stages that reproduce a model from nothing.

    dnd train tokenizer     --config configs/tokenizer-words.yaml
    dnd train extract-codes --config configs/transformer-words.yaml
    dnd train transformer   --config configs/transformer-words.yaml
    dnd train set-defaults  runs/transformer-words/checkpoint.pt --cfg-scale 1.5 --temperature 0.3
    dnd train set-tokenizer runs/transformer-words/checkpoint.pt runs/tokenizer-words-decoder/tokenizer.pt

Also runnable without the `dnd` entry point, e.g. under torchrun:
    python -m dnd_training.cli transformer --config configs/transformer-words.yaml --set train.steps=100
    torchrun --standalone --nproc_per_node 2 -m dnd_training.cli transformer --config ...
"""
import logging

import click

from dnd_sdk.cli.flags import user_errors
from dnd_sdk.cli.options import sampler_options


def _run_options(fn):
    options = [
        click.option("--config", "config_path", type=click.Path(dir_okay=False), help="YAML or JSON run config."),
        click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                     help="Override a config entry, e.g. --set train.steps=100 (repeatable)."),
        click.option("--steps", type=int, help="Same as --set train.steps=N."),
        click.option("--batch-size", type=int, help="Global batch size, same as --set train.batch_size=N."),
        click.option("-o", "--out", "out_dir", type=click.Path(file_okay=False),
                     help="The run folder, same as --set train.out_dir=DIR."),
        click.option("--resume", is_flag=True, help="Continue the run in train.out_dir from its train_state.pt."),
        click.option("--force", is_flag=True, help="Start over in a folder that holds a run: deletes its run files "
                                                   "(checkpoint, training state, log, config, sample grids)."),
        click.option("--stop-at", type=int, hidden=True, help="Stop after this step, as if interrupted (tests)."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _overrides(overrides, steps, batch_size, out_dir) -> list:
    extra = [f"train.{k}={v}" for k, v in (("steps", steps), ("batch_size", batch_size), ("out_dir", out_dir))
             if v is not None]
    return list(overrides) + extra


@click.group("train")
def train():
    """Train a tokenizer, extract codes, train a transformer."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # under `dnd`, whose group configured logging at WARNING first: a run still says what it chose (precision)
    logging.getLogger("dnd_training").setLevel(logging.INFO)


@train.command("tokenizer")
@_run_options
@user_errors
def tokenizer_cmd(config_path, overrides, steps, batch_size, out_dir, resume, force, stop_at):
    """Train the RQ tokenizer; writes OUT/tokenizer.pt."""
    from .train_tokenizer import TokenizerRunConfig, train_tokenizer
    _train(TokenizerRunConfig, train_tokenizer, config_path, _overrides(overrides, steps, batch_size, out_dir),
           resume=resume, force=force, stop_at=stop_at)


@train.command("extract-codes")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="Transformer run config (its codes section).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="e.g. --set codes.variants=50")
@click.option("--device", default="cpu", show_default=True, help="Device to encode on (cpu, cuda).")
@user_errors
def extract_codes_cmd(config_path, overrides, device):
    """Encode the dataset with the tokenizer into codes.path (npz)."""
    from .codes import extract_codes
    from .config import load_config
    from .train_transformer import TransformerRunConfig
    cfg = load_config(TransformerRunConfig, config_path, overrides)
    click.echo(f"wrote {extract_codes(cfg.codes, device=device)}")


@train.command("transformer")
@_run_options
@user_errors
def transformer_cmd(config_path, overrides, steps, batch_size, out_dir, resume, force, stop_at):
    """Train the DnD transformer on extracted codes; writes OUT/checkpoint.pt."""
    from .train_transformer import TransformerRunConfig, train_transformer
    _train(TransformerRunConfig, train_transformer, config_path, _overrides(overrides, steps, batch_size, out_dir),
           resume=resume, force=force, stop_at=stop_at)


def _train(config_class, trainer, config_path, overrides, **run_flags) -> None:
    from .config import load_config
    click.echo(f"wrote {trainer(load_config(config_class, config_path, overrides), **run_flags)}")


@train.command("set-defaults")
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False))
@sampler_options(seed=False, unset="keep the stored value", per_head=False)
@user_errors
def set_defaults_cmd(checkpoint, sampling):
    """Make these the checkpoint's default sampling settings (kept in meta, exported to the manifest)."""
    from .checkpoint import set_sampler_defaults
    stored = set_sampler_defaults(checkpoint, **sampling.given())
    click.echo(f"{checkpoint}: sampler defaults " + ", ".join(f"{k}={v}" for k, v in stored.items()))


@train.command("set-tokenizer")
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False))
@click.argument("tokenizer", type=click.Path(exists=True, dir_okay=False))
@user_errors
def set_tokenizer_cmd(checkpoint, tokenizer):
    """Put TOKENIZER into CHECKPOINT; it must make the same codes (a freeze_codes fine-tune of its decoder)."""
    from .checkpoint import set_tokenizer
    set_tokenizer(checkpoint, tokenizer)
    click.echo(f"{checkpoint}: tokenizer replaced by {tokenizer}'s")


if __name__ == "__main__":
    train()
