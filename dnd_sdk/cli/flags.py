"""User errors on the command line: a `DndError` becomes its message and exit code 1, never a
traceback, in the words of the interface used: the library names its Python arguments
(`InvalidInputError.names`); a command shows its own flags in their place.

    @click.command()
    @user_errors
    def main(...): ...
"""
import functools
import re

import click

from ..errors import DndError


def in_flags(error: Exception, command: click.Command) -> str:
    """str(error), with each argument it names (and a `name=True` after it) replaced by the command's flag; a
    path component of the same name (`runs/out`) stays as it is."""
    text = str(error)
    flags = {p.name: max(p.opts, key=len) for p in command.params if isinstance(p, click.Option)}
    for name in getattr(error, "names", ()):
        if name in flags:
            text = re.sub(rf"(?<![\w./-]){re.escape(name)}(=True)?(?![\w/-])", flags[name], text)
    return text


def click_error(error: DndError, command=None) -> click.ClickException:
    """The one-line exit for a user error, in `command`'s flags when there is one."""
    return click.ClickException(in_flags(error, command) if command is not None else str(error))


def user_errors(fn):
    """Decorate a command's callback: a DndError it raises exits through click_error."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except DndError as e:
            raise click_error(e, click.get_current_context().command) from None
    return wrapper
