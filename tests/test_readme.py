"""The README's examples: every folder or file they write into the repository is git-ignored, so trying
them leaves `git status` clean."""
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def written_by_examples() -> set:
    """Relative paths the README's commands write: --out / -o / > targets, and the part*/ of combined shards."""
    text = (ROOT / "README.md").read_text()
    blocks = "\n".join(re.findall(r"```bash\n(.*?)```", text, re.S))
    targets = set(re.findall(r"(?:--out|-o|>)\s+([\w.*/-]+)", blocks))
    targets |= set(re.findall(r"\b(part\*/)", blocks))
    return {t for t in targets if not t.startswith(("/", "$"))}


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(), reason="needs a git checkout")
def test_what_the_examples_write_is_ignored():
    targets = written_by_examples()
    assert {"samples/", "part*/", "out/model", "fid/"} <= targets  # the parser sees the examples
    for target in sorted(targets):
        probe = target.replace("*", "0")
        if probe.endswith("/"):
            probe += "000000.png"  # a file inside the folder
        ignored = subprocess.run(["git", "check-ignore", "-q", probe], cwd=ROOT).returncode == 0
        assert ignored, f"{target} (written by a README example) is not git-ignored"
