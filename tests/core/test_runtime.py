"""The shared runtime rules: what ``trainer.precision: auto`` means on each kind of machine."""

import pytest

from nailseg.core.runtime import resolve_precision


@pytest.mark.parametrize("setting, accelerator, keras, cpu_bf16, name, channels_last", [
    ("auto", "gpu", False, False, "bf16-mixed", True),
    ("auto", "gpu", True, False, "16-mixed", False),
    # a CPU with AMX: torch trains in bf16 with NHWC convolutions; Keras stays 32-bit
    ("auto", "cpu", False, True, "bf16-mixed", True),
    ("auto", "cpu", True, True, "32-true", False),
    # a CPU without bf16 matrix units: 32-bit, whatever the stack
    ("auto", "cpu", False, False, "32-true", False),
    # an explicit choice is kept; channels_last only where it pays
    ("32-true", "cpu", False, True, "32-true", False),
    ("bf16-mixed", "cpu", False, False, "bf16-mixed", False),
    ("bf16-mixed", "cpu", False, True, "bf16-mixed", True),
    ("mixed_float16", "gpu", True, False, "16-mixed", False),
    ("float32", "gpu", False, False, "32-true", False),
])
def test_precision_rule(setting, accelerator, keras, cpu_bf16, name, channels_last):
    # what the Keras stack passes: float16 on a GPU, no NHWC switch, and no CPU bf16 (slower there)
    stack = dict(gpu_auto="16-mixed", channels_last_ok=False) if keras else dict(cpu_bf16=cpu_bf16)
    p = resolve_precision(setting, accelerator, **stack)
    assert (p.name, p.channels_last, p.on_gpu) == (name, channels_last, accelerator == "gpu")


def test_cpu_bf16_probe_can_be_turned_off(monkeypatch):
    hardware = pytest.importorskip("nailseg.stacks.lightning.hardware")
    hardware.cpu_has_fast_bf16.cache_clear()
    monkeypatch.setenv("NAILSEG_CPU_BF16", "0")
    try:
        assert hardware.cpu_has_fast_bf16() is False
        assert hardware.torch_precision("auto", "cpu").name == "32-true"
    finally:
        hardware.cpu_has_fast_bf16.cache_clear()


@pytest.mark.parametrize("flags, amx, expected", [
    ({"avx512_bf16", "avx512f"}, False, True),   # AMD Zen 4/5, Cooper Lake: native bf16 dot products
    ({"amx_bf16", "amx_tile"}, True, True),      # Sapphire Rapids and later
    ({"avx512f", "avx2"}, False, False),         # bf16 would be emulated: slower than fp32
    (set(), False, False),
])
def test_cpu_bf16_probe_reads_amx_or_avx512_bf16(monkeypatch, flags, amx, expected):
    hardware = pytest.importorskip("nailseg.stacks.lightning.hardware")
    import torch

    monkeypatch.delenv("NAILSEG_CPU_BF16", raising=False)
    monkeypatch.setattr(hardware, "_cpu_flags", lambda: flags)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    hardware.cpu_has_fast_bf16.cache_clear()
    try:
        assert hardware.cpu_has_fast_bf16() is expected
    finally:
        hardware.cpu_has_fast_bf16.cache_clear()


def test_a_last_batch_of_one_is_dropped_and_few_batches_are_kept():
    from nailseg.core.runtime import drop_last

    assert drop_last(64, 8) and not drop_last(29, 8)   # several batches / a ragged 5 kept
    assert drop_last(17, 8) and not drop_last(1, 8)     # a batch of one would break BatchNorm; one pair stays
