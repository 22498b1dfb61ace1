"""Scaling analysis: log-log fits recover known exponents; mechanisms run and are timed."""
import math

import pytest

from attnlab.analysis.scaling import (
    ScalingResult,
    default_mechanisms,
    fit_loglog,
    geometric,
    measure_scaling,
    plot_scaling,
)


def test_fit_recovers_exact_power_laws():
    ns = geometric(256, 8192)
    assert ns == [256, 512, 1024, 2048, 4096, 8192]
    for p, c in [(1.0, 1e-6), (2.0, 3e-9), (1.15, 2e-7)]:
        slope, icpt, resid = fit_loglog(ns, [c * n ** p for n in ns])
        assert abs(slope - p) < 1e-9 and abs(icpt - math.log(c)) < 1e-7 and resid < 1e-9
    r = ScalingResult("n log n", ns, [n * math.log(n) * 1e-8 for n in ns])
    assert 1.0 < r.slope < 1.25  # N log N over this range looks like N^1.1


def test_measure_runs_every_mechanism_and_plots(tmp_path):
    mechs = default_mechanisms(head_dim=16, window=32, block=16, chunk=16)
    res = measure_scaling(mechs, [64, 128], repeats=1)
    assert [r.name for r in res] == list(mechs)
    assert all(len(r.seconds) == 2 and min(r.seconds) > 0 for r in res)
    path = plot_scaling(res, str(tmp_path / "scaling.png"))
    assert path is None or (tmp_path / "scaling.png").stat().st_size > 0


def test_bad_input():
    with pytest.raises(ValueError, match=r"must be equal-length lists of at least 2"):
        fit_loglog([1], [1.0])
    with pytest.raises(ValueError, match=r"hi \(4\) must be >= lo \(8\)"):
        geometric(8, 4)
    with pytest.raises(ValueError, match=r"ns must be a non-empty list of positive ints"):
        measure_scaling({}, [0])
