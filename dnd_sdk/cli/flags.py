"""User errors on the command line: a `DndError` becomes its message and exit code 1, never a
traceback, in the words of the interface used: the library marks the Python argument names in its
messages (`dnd_sdk.errors.arg`); a command shows its own flags in their place. Nothing else in a
message is touched: a path or a label that contains an argument's name is quoted as the user typed it.

    @click.command()
    @user_errors
    def main(...): ...
"""
import functools
import re
from collections.abc import Callable
from typing import Any, Optional

import click

from ..errors import ARG_MARK, DndError, arg


def in_flags(error: Exception, command: click.Command) -> str:
    """The error's message with each marked argument name (and a `=True` after it) replaced by the command's
    flag (`per_class` -> `--per-class`), or its positional argument (`model` -> `MODEL`)."""
    text = error.marked_message if isinstance(error, DndError) else str(error)
    for name in getattr(error, "names", ()):
        # helpers that predate the marks (dnd_sdk.arguments) open their message with the name: "num must be ..."
        if ARG_MARK + name + ARG_MARK not in text and re.match(rf"{re.escape(name)}(?![\w-])", text):
            text = arg(name) + text[len(name):]
    words = {p.name: max(p.opts, key=len) if isinstance(p, click.Option) else p.human_readable_name
             for p in command.params}

    def flag(match: re.Match) -> str:
        name, is_true = match.group(1), match.group(2)
        return words[name] if name in words else name + (is_true or "")
    return re.sub(f"{ARG_MARK}(\\w+){ARG_MARK}(=True)?", flag, text).replace(ARG_MARK, "")


def click_error(error: DndError, command: Optional[click.Command] = None) -> click.ClickException:
    """The one-line exit for a user error, in `command`'s flags when there is one."""
    return click.ClickException(in_flags(error, command) if command is not None else str(error))


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a command's callback: a DndError it raises exits through click_error."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except DndError as e:
            raise click_error(e, click.get_current_context().command) from None
    return wrapper


def refuse_flags_that_do_not_apply(ctx: click.Context, target: str, applies_to: dict) -> None:
    """A flag typed for a target it does nothing for is an error, not silently ignored.

    applies_to: parameter name -> the targets it applies to, e.g. {"depth": ("a tokenizer",)};
    `target` is what the command was given, in the same words ("a model folder")."""
    flags = {p.name: max(p.opts, key=len) for p in ctx.command.params if isinstance(p, click.Option)}
    for name, targets in applies_to.items():
        typed = ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE
        if typed and target not in targets:
            raise click.UsageError(f"{flags[name]} does not apply to {target}; it applies to {' and '.join(targets)}",
                                   ctx)
