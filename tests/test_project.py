"""The project's own promises: the README's two commands exist and CI runs the test one."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _readme_commands() -> dict[str, str]:
    """The commands under the README's 'Quick start' heading, by the word before them."""
    text = (ROOT / "README.md").read_text()
    quick = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```(?:bash|sh)?\n(.*?)```", quick, flags=re.S)
    return {line.split()[1]: line.strip() for b in blocks for line in b.splitlines()
            if line.startswith("make ")}


def test_readme_has_the_two_commands():
    commands = _readme_commands()
    assert commands == {"demo": "make demo", "test": "make test"}


def test_ci_runs_exactly_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    steps = [line.strip() for line in ci if line.strip() and not line.lstrip().startswith("#")]
    assert _readme_commands()["test"] in steps


def test_make_targets_install_first():
    out = subprocess.run(["make", "-pn", "-f", str(ROOT / "Makefile"), "test"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    for target in ("test", "demo"):
        rule = re.search(rf"^{target}: (.*)$", out, flags=re.M)
        assert rule and "install" in rule.group(1).split(), f"{target} must depend on install"
