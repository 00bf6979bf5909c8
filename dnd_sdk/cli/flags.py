"""Error texts in the words of the interface used: the library names its Python arguments
(`InvalidInputError.names`); a command shows its own flags in their place."""
import re

import click


def in_flags(error: Exception, command: click.Command) -> str:
    """str(error), with each argument it names (and a `name=True` after it) replaced by the command's flag."""
    text = str(error)
    flags = {p.name: max(p.opts, key=len) for p in command.params if isinstance(p, click.Option)}
    for name in getattr(error, "names", ()):
        if name in flags:
            text = re.sub(rf"(?<![\w.-]){re.escape(name)}(=True)?(?![\w-])", flags[name], text)
    return text
