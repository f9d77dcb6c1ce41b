"""``trainer.precision: fastest`` and ``model.channels_last: auto`` (hipdisloc.precision)."""

from __future__ import annotations

import pytest
import torch

from hipdisloc.precision import cpu_flags, resolve_channels_last, resolve_precision

AMX = {"fpu", "avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}
AVX2_ONLY = {"fpu", "sse4_2", "avx", "avx2", "fma"}


def test_cpu_flags_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: X\nflags\t\t: fpu avx2 avx512_bf16\n\n"
                    "processor\t: 1\nflags\t\t: fpu\n")
    assert cpu_flags(info) == {"fpu", "avx2", "avx512_bf16"}
    assert cpu_flags(tmp_path / "absent") == set()


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU branch of accelerator=auto")
def test_fastest_is_bf16_only_where_the_cpu_has_it():
    cpu = {"accelerator": "cpu", "precision": "fastest", "devices": 1}
    assert resolve_precision(cpu, AMX) == {**cpu, "precision": "bf16-mixed"}
    assert resolve_precision(cpu, AVX2_ONLY)["precision"] == "32-true"
    assert resolve_precision({**cpu, "accelerator": "auto"}, AVX2_ONLY)["precision"] == "32-true"
    # any other value is left alone
    assert resolve_precision({**cpu, "precision": "32-true"}, AMX)["precision"] == "32-true"
    assert resolve_precision({**cpu, "precision": "bf16-mixed"}, AVX2_ONLY)["precision"] == \
        "bf16-mixed"


def test_channels_last_follows_the_resolved_precision():
    assert resolve_channels_last("auto", "bf16-mixed") is True
    assert resolve_channels_last("auto", "32-true") is False
    assert resolve_channels_last(True, "32-true") is True
    assert resolve_channels_last(False, "bf16-mixed") is False
    with pytest.raises(ValueError, match="channels_last"):
        resolve_channels_last("yes", "32-true")


def test_the_demo_resolves_to_what_this_machine_supports():
    from hydra import compose, initialize_config_dir

    from hipdisloc.config import to_settings
    from hipdisloc.paths import CONFIG_DIR
    from hipdisloc.stages.train.job import for_this_machine

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        cfg = compose("train", overrides=["experiment=demo"], return_hydra_config=True)
    from hydra.core.hydra_config import HydraConfig

    HydraConfig.instance().set_config(cfg)
    s = for_this_machine(to_settings(cfg))
    native = bool(cpu_flags() & {"avx512_bf16", "amx_bf16"}) or (
        torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    assert s.trainer.precision == ("bf16-mixed" if native else "32-true")
    assert s.model.channels_last is native
