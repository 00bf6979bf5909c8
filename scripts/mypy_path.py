"""Link each renamed package of setup.py's package_dir under build/mypy-path (`make lint` runs this).

mypy finds a module by its folder's name, and cannot follow the editable install's import hook:
build/mypy-path/dnd_training -> training/ (and so on) lets it check each folder under the name that
the code imports it by. pyproject.toml's mypy_path points there.
"""
import ast
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "build" / "mypy-path"


def package_dir() -> dict:
    """setup.py's package_dir, read without running setup.py."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    return next(ast.literal_eval(n.value) for n in ast.walk(tree)
                if isinstance(n, ast.keyword) and n.arg == "package_dir")


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for name, folder in package_dir().items():
        link = OUT / name
        if link.is_symlink():
            link.unlink()
        if name != folder:  # a package in a folder of its own name is found where it is
            link.symlink_to(os.path.relpath(ROOT / folder, OUT), target_is_directory=True)


if __name__ == "__main__":
    main()
