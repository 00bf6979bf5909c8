"""`dnd`: the command line. Adding a command is one line in COMMANDS.

A command's module is imported only when that command runs, so `dnd --help` lists every command
even where the extra a command needs (torch for `dnd train`) is not installed.
"""
import importlib
import logging
from typing import Any, NoReturn, Optional

import click

from ..errors import DndError
from .flags import click_error

# name: ("module:attribute", one-line help, extra that installs its dependencies)
COMMANDS = {
    "generate": ("dnd_sdk.cli.generate:generate", "Sample numbered PNGs (+ metadata, npz, grid) into a folder; resumable.", None),
    "serve": ("dnd_sdk.cli.serve:serve", "Serve a model over HTTP, batching concurrent requests.", "serve"),
    "info": ("dnd_sdk.cli.info:info", "Print the summary of a model folder's manifest.", None),
    "train": ("dnd_training.cli:train", "Train a tokenizer, extract codes, train a transformer.", "train"),
    "export": ("dnd_export.cli:main", "Export a checkpoint.pt to an ONNX model folder (same as dnd-export).", "export"),
    "import": ("dnd_training.importers.cli:import_group", "Turn published checkpoints into a dnd checkpoint.pt.", "train"),
    "eval": ("dnd_eval.cli:evaluate", "Judge models, tokenizers, images or the dataset with OCR.", "eval"),
    "bench": ("dnd_bench.cli:bench", "Images/s of the runtime vs the PyTorch reference, as JSON.", "export"),
}


def _missing(name: str, extra: str, error: ImportError) -> click.Command:
    def fail(**_: Any) -> NoReturn:
        raise click.ClickException(f"`dnd {name}` needs the {extra!r} extra: pip install 'dnd-sdk[{extra}]' ({error})")
    return click.Command(name, callback=fail, help=f"(needs: pip install 'dnd-sdk[{extra}]')",
                         context_settings={"ignore_unknown_options": True, "allow_extra_args": True})


class CommandRegistry(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> Optional[click.Command]:
        if name not in COMMANDS:
            return None
        target, _, extra = COMMANDS[name]
        module, attr = target.split(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except ImportError as e:
            if extra is None:
                raise
            return _missing(name, extra, e)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # from the registry, so that --help imports no command module
        with formatter.section("Commands"):
            formatter.write_dl([(name, COMMANDS[name][1]) for name in self.list_commands(ctx)])

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except DndError as e:  # a user error: its message, exit 1, no traceback
            command = self.get_command(ctx, ctx.invoked_subcommand) if ctx.invoked_subcommand else None
            raise click_error(e, command) from None


@click.group(cls=CommandRegistry, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log which backend runs and what is skipped.")
def cli(verbose: bool) -> None:
    """dnd: train, export, sample, evaluate and benchmark DnD-Transformer image generators."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def main(argv: Optional[list[str]] = None) -> None:
    cli.main(args=argv, prog_name="dnd")
