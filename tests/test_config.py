"""The configuration schema (hipdisloc/config.py): each command composes to its dataclass, a
mistyped key or a wrong type fails at composition naming the key, and the package has no
import cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException

import hipdisloc
from hipdisloc.config import SCHEMAS, TrainConfig, to_settings
from hipdisloc.paths import CONFIG_DIR

PACKAGE = Path(hipdisloc.__file__).parent


def _compose(command: str, overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(command, overrides=overrides)


def _message(err: BaseException) -> str:
    """The error and every cause under it (Hydra wraps OmegaConf's)."""
    parts = []
    while err is not None:
        parts.append(str(err))
        err = err.__cause__ or err.__context__
    return "\n".join(parts)


@pytest.mark.parametrize("command", sorted(SCHEMAS))
def test_every_command_composes_to_its_schema(command):
    settings = to_settings(_compose(command, []))
    assert type(settings) is SCHEMAS[command]


@pytest.mark.parametrize("experiment", ["demo", "demo_large", "rouzrokh2021"])
def test_no_experiment_trains_on_the_phantoms_truth(experiment):
    """Nothing a default study runs reads the phantom's truth: its backbone starts from pixels
    (or ImageNet, or nothing), never from the privileged measurements, and its crops are cut
    by the study's detector."""
    from hipdisloc.models.classifier import PRIVILEGED_PHANTOM_GEOMETRY, RENAMED

    cfg = to_settings(_compose("train", [f"experiment={experiment}"]))
    assert cfg.model.pretrained not in (PRIVILEGED_PHANTOM_GEOMETRY, *RENAMED)
    assert cfg.model.pretrained in ("self_supervised", "none", "auto", "imagenet")
    assert cfg.crop.boxes_from == "detector"


def test_the_demo_reads_as_its_yaml_says():
    demo = to_settings(_compose("train", ["experiment=demo"]))
    assert isinstance(demo, TrainConfig)
    assert (demo.name, demo.paths.data_dir) == ("demo", "data/demo")  # interpolation resolved
    assert demo.cohort.phantom.n_patients == 2000 and demo.cohort.phantom.risk.head_22 == 3.5
    assert (demo.schedule.head_epochs, demo.schedule.full_epochs) == (2, 2)
    assert (demo.model.pretrained, demo.model.lr, demo.model.head) == \
        ("self_supervised", 1e-4, "linear")
    assert demo.self_supervised.seed != demo.cohort.phantom.seed  # outside the study
    assert demo.pretrain.epochs == 24
    assert demo.pretrain.seed != demo.cohort.phantom.seed  # other patients than the study's
    assert demo.detector.data.input_size == 192 and demo.crop.crop_size == 64
    paper = to_settings(_compose("train", []))
    assert paper.schedule.head_epochs == 15 and paper.model.pos_weight == 25.0
    assert paper.model.head == "fastai"  # the paper's fastai cnn_learner head


def test_a_mistyped_key_in_an_experiment_file_fails_at_composition(tmp_path):
    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "typo.yaml").write_text(
        "# @package _global_\nschedule: {head_epoch: 3}\n")
    with pytest.raises(ConfigCompositionException) as err:
        _compose("train", [f"hydra.searchpath=[file://{tmp_path}]", "experiment=typo"])
    assert "head_epoch" in _message(err.value)


@pytest.mark.parametrize("command,override,key", [
    ("train", "schedule.head_epoch=3", "head_epoch"),
    ("train", "model.pos_weight=heavy", "pos_weight"),
    ("train", "cohort.phantom.risk.head_23=1.0", "head_23"),
    ("crop", "crop_sise=64", "crop_sise"),
    ("predict", "export.format=[onnx]", "format"),
])
def test_a_mistyped_key_or_a_wrong_type_on_the_command_line_names_the_key(command, override,
                                                                          key):
    with pytest.raises(ConfigCompositionException) as err:
        _compose(command, [override])
    assert key in _message(err.value)


def _imports(path: Path) -> set[str]:
    """The hipdisloc modules ``path`` imports, at module level or inside functions."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
    return {n for n in names if n.startswith("hipdisloc")}


def test_no_import_cycle_inside_the_package():
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    graph = {m: {i for i in _imports(p) if i in modules and i != m}
             for m, p in modules.items()}
    for m in graph:  # a package's __init__ is not a dependency of its own modules' siblings
        graph[m] = {i for i in graph[m] if not m.startswith(i + ".")}
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycle = path[path.index(n):] + [n] if n in path else [m, n]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if n not in state:
                visit(n, [*path, n])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert len(graph) > 50  # the walk saw the package


@pytest.mark.parametrize("command,override", [
    ("crop", "detector_weights=/models/detector.pt"),
    ("predict", "detector_weights=/models/detector.pt"),
    ("train", "report.fusion.covariates=[sex,age,bmi,smoker]"),
])
def test_path_and_list_settings_compose_from_the_command_line(command, override):
    key, value = override.split("=", 1)
    settings = to_settings(_compose(command, [override]))
    got = settings
    for part in key.split("."):
        got = getattr(got, part)
    assert str(got).replace("'", "").replace(" ", "") == value
