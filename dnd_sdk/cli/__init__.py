"""The `dnd` command line: a registry of thin commands (main.py), one module per command."""
