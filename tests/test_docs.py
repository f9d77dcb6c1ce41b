"""The documentation's promises: every ``python -m hipdisloc.<stage>`` command shown in a fenced
shell block (or an inline code span) of README.md and docs/*.md composes with the configuration
as written, and every relative Markdown link points to a file that exists.

Fast: configs are only composed (Hydra's compose API), nothing runs.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from hipdisloc.paths import CONFIG_DIR, PROJECT_ROOT

# What composing a config with an unknown key, group option or ill-typed value raises.
COMPOSE_ERRORS = (HydraException, OmegaConfBaseException)

try:  # the structured-config schema registers itself in Hydra's ConfigStore on import
    import hipdisloc.config  # noqa: F401
except ImportError:  # not there: the YAML files alone are the configuration
    pass

DOCS = [PROJECT_ROOT / "README.md", *sorted((PROJECT_ROOT / "docs").glob("*.md"))]

# Stages whose command line is a Hydra override list, and the config each composes.
HYDRA_STAGES = {s: s for s in ("train", "prepare", "detect", "crop", "phantom", "predict")}
# Hydra's own flags that take a value (the value is not an override).
FLAGS_WITH_VALUE = {"--cfg", "-c", "--package", "-p", "--config-name", "-cn", "--config-path",
                    "-cp", "--config-dir", "-cd", "--experimental-rerun"}

FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```", re.S | re.M)
SHELL_LANGS = {"", "bash", "sh", "shell", "console", "zsh"}
INLINE = re.compile(r"`([^`\n]*(?:\n[^`\n]+)*)`")
COMMAND = re.compile(r"(?:^|\s)(?:\S*/)?python3?\s+-m\s+hipdisloc\.([A-Za-z_.]+)(.*)$", re.S)
PLACEHOLDER = re.compile(r"^[A-Z][A-Z0-9_]*$")  # N, DIR, PATH, ...


def _rel(path: Path) -> str:
    return str(path.relative_to(PROJECT_ROOT))


def _shell_blocks(text: str) -> list[str]:
    return [body for lang, body in FENCE.findall(text) if lang.strip().lower() in SHELL_LANGS]


def _logical_lines(block: str) -> list[str]:
    """Shell lines with backslash continuations joined."""
    return block.replace("\\\n", " ").splitlines()


def _commands(path: Path) -> list[tuple[str, str, str]]:
    """(where, stage module, argument string) for every hipdisloc command in a Markdown file."""
    text = path.read_text()
    found = []
    for block in _shell_blocks(text):
        for line in _logical_lines(block):
            m = COMMAND.search(line)
            if m:
                found.append((f"{_rel(path)}: {line.strip()}", m.group(1), m.group(2)))
    prose = FENCE.sub("", text)
    for span in INLINE.findall(prose):
        span = " ".join(span.split())
        m = COMMAND.search(span)
        if m:
            found.append((f"{_rel(path)}: `{span}`", m.group(1), m.group(2)))
    return found


def _one_value(value: str) -> str:
    """A sweep value as one value: ``0..9`` -> ``0``, ``0,1`` -> ``0``, an Optuna search space
    (``interval(2.0,30.0)``, ``tag(log,interval(...))``) -> its low end; a placeholder (N, DIR)
    -> a dummy that any type accepts."""
    m = re.fullmatch(r"(?:tag\(\w+,)?interval\(([^,]+),[^)]+\)\)?", value)
    if m:
        return m.group(1)
    m = re.fullmatch(r"(-?\d+)\.\.(-?\d+)", value)
    if m:  # the range fold=0..9 stands for 0,...,9
        lo, hi = int(m.group(1)), int(m.group(2))
        value = ",".join(str(v) for v in range(lo, hi + 1))
    if "," in value and not value.startswith(("[", "{", "'", '"')):
        value = value.split(",")[0]
    if PLACEHOLDER.fullmatch(value):
        value = "1"
    return value


def overrides_of(args: str) -> list[str]:
    """The Hydra overrides of a command's argument string: flags, ``...`` and shell comments
    dropped, sweeps reduced to one value."""
    tokens = shlex.split(args, comments=True)
    out, skip = [], False
    for tok in tokens:
        if skip:
            skip = False
            continue
        if tok in {">", ">>", "2>&1", "|", "&&", ";"}:
            break
        if tok.startswith("-"):
            skip = tok in FLAGS_WITH_VALUE
            continue
        if tok in {"...", "…"} or "=" not in tok:
            continue
        key, _, value = tok.partition("=")
        out.append(f"{key}={_one_value(value)}")
    return out


def documented_commands() -> list[tuple[str, str, list[str]]]:
    cmds = []
    for path in DOCS:
        for where, module, args in _commands(path):
            if module in HYDRA_STAGES:
                cmds.append((where, HYDRA_STAGES[module], overrides_of(args)))
    return cmds


def _compose(config_name: str, overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides)


COMMANDS = documented_commands()


def test_the_docs_show_commands():
    stages = {stage for _, stage, _ in COMMANDS}
    assert {"train", "prepare", "detect", "crop", "phantom", "predict"} <= stages, stages
    readme = (PROJECT_ROOT / "README.md").read_text()
    assert "python -m hipdisloc.train fold=0..9 -m" in readme  # the paper's study, as written
    assert "make test" in readme  # CI's command


@pytest.mark.parametrize("where,stage,overrides", COMMANDS, ids=[c[0][:120] for c in COMMANDS])
def test_documented_command_composes(where, stage, overrides):
    cfg = _compose(stage, overrides)
    assert cfg is not None, where


def test_overrides_are_read_as_written():
    args = (" experiment=demo fold=0..9 -m hydra/launcher=submitit_slurm trainer.num_nodes=N "
            "--cfg job cohort.manifest=/data/tha/manifest.csv ...   # a comment=1")
    assert overrides_of(args) == ["experiment=demo", "fold=0", "hydra/launcher=submitit_slurm",
                                  "trainer.num_nodes=1", "cohort.manifest=/data/tha/manifest.csv"]
    assert overrides_of("'model.lr=tag(log,interval(3e-5,1e-3))' a=interval(2.0,30.0)") == \
        ["model.lr=3e-5", "a=2.0"]


@pytest.mark.parametrize("overrides", [
    ["schedule.head_epoch=3"],  # a key that does not exist (head_epochs does)
    ["trainer=tpu_pod"],  # a group option that does not exist
    ["experiment=demo", "crop.boxes_form=ground_truth"],
])
def test_a_made_up_override_fails_to_compose(overrides):
    with pytest.raises(COMPOSE_ERRORS):
        _compose("train", overrides)


def test_a_made_up_stage_override_fails_to_compose():
    with pytest.raises(COMPOSE_ERRORS):
        _compose("phantom", ["n_patient=3"])


# ---------------------------------------------------------------------------------- links

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _links(path: Path) -> list[str]:
    text = FENCE.sub("", path.read_text())
    text = re.sub(r"`[^`\n]*`", "", text)
    return LINK.findall(text)


def _relative_links():
    for path in DOCS:
        for target in _links(path):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):
                continue  # http(s), mailto
            yield path, target


RELATIVE_LINKS = list(_relative_links())


def test_docs_have_links():
    assert len(RELATIVE_LINKS) > 20
    assert any(t.startswith("docs/") for p, t in RELATIVE_LINKS if p.name == "README.md"
               and p.parent == PROJECT_ROOT)


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors of a Markdown page (lower case, punctuation dropped, spaces to
    hyphens)."""
    text = FENCE.sub("", page.read_text())
    out = set()
    for heading in re.findall(r"^#{1,6}\s+(.*?)\s*#*\s*$", text, flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        out.add(slug)
    return out


@pytest.mark.parametrize("path,target", RELATIVE_LINKS,
                         ids=[f"{_rel(p)}->{t}" for p, t in RELATIVE_LINKS])
def test_relative_link_exists(path, target):
    file_part, _, anchor = target.partition("#")
    resolved = (path.parent / file_part).resolve() if file_part else path
    assert resolved.exists(), f"{_rel(path)} links to {target}, which does not exist"
    if anchor and resolved.suffix == ".md":
        assert anchor in _anchors(resolved), f"{_rel(path)} links to {target}: no such heading"


def test_every_docs_page_is_in_the_index():
    index = (PROJECT_ROOT / "docs" / "README.md").read_text()
    for page in (PROJECT_ROOT / "docs").glob("*.md"):
        if page.name != "README.md":
            assert f"({page.name})" in index, f"docs/README.md does not list {page.name}"
