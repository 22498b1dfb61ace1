"""Machine awareness: ISA parsing, per-dtype peaks and the roofline arithmetic."""
import pytest
import torch

from attnlab.analysis import machine as M

ZEN4 = """processor\t: 0
model name\t: AMD EPYC 9R14
flags\t\t: fpu sse avx2 fma avx512f avx512_vnni avx512_bf16 avx512bw
processor\t: 1
model name\t: AMD EPYC 9R14
flags\t\t: fpu sse avx2 fma avx512f avx512_vnni avx512_bf16 avx512bw
"""
SPR = "model name\t: Intel(R) Xeon(R) Platinum 8488C\nflags\t\t: avx2 fma avx512f " \
      "avx512_bf16 avx512_fp16 amx_bf16 amx_int8 amx_tile\n"
ZEN3 = "model name\t: AMD EPYC 7R13\nflags\t\t: avx2 fma\n"


@pytest.mark.parametrize("text, model, bf16, fp16, has", [
    (ZEN4, "AMD EPYC 9R14", True, False, ("AVX2", "AVX-512", "AVX512-BF16")),
    (SPR, "Intel(R) Xeon(R) Platinum 8488C", True, True, ("AMX-BF16", "AMX-INT8")),
    (ZEN3, "AMD EPYC 7R13", False, False, ("AVX2", "FMA")),
])
def test_parse_cpuinfo(text, model, bf16, fp16, has):
    name, isa = M.parse_cpuinfo(text)
    assert name == model
    assert set(has) <= set(isa)
    info = M.CpuInfo(model=name, isa=isa, torch_capability="x", threads=1, cores=2)
    assert info.native_bf16 is bf16 and info.native_fp16 is fp16
    assert model in info.describe()


def test_this_machine_is_described():
    info = M.cpu_info()
    assert info.threads >= 1 and info.cores >= 1 and info.model
    assert isinstance(M.native_bf16(), bool)


def test_measure_small_and_roofline():
    m = M.measure((torch.float32, torch.bfloat16), bandwidth=True, n=128, repeats=1)
    assert m.peaks[torch.float32] > 0 and m.peaks[torch.bfloat16] > 0 and m.read_bw > 0
    # the roofline: memory-bound below the ridge, compute-bound above
    ridge = m.ridge(torch.float32)
    assert m.attainable(ridge / 2) == pytest.approx(ridge / 2 * m.read_bw)
    assert m.attainable(ridge * 2) == pytest.approx(m.peaks[torch.float32])
    assert m.peak(torch.float16) == m.peaks[torch.float32]  # unmeasured: fp32's
    line = m.line()
    assert "fp32" in line and "bf16" in line and "GB/s" in line


def test_bad_arguments():
    with pytest.raises(TypeError, match="dtype"):
        M.matmul_peak(torch.int32)
    with pytest.raises(ValueError, match="n"):
        M.matmul_peak(torch.float32, n=4)
    with pytest.raises(ValueError, match="n_bytes"):
        M.read_bandwidth(n_bytes=10)
    with pytest.raises(ValueError, match="bandwidth"):
        M.Machine(cpu=M.cpu_info(), peaks={torch.float32: 1.0}).ridge()
