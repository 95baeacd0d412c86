"""The accuracy gate judges honestly (issue #14, class 5): a replacement whose output is NaN or
Inf on the calibration data, and a layer the calibration never reaches, are kept with the
reason, whatever min_sqnr says."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import bigperf
from bigperf.accuracy import gate_reason


class WithUnusedBranch(nn.Module):
    def __init__(self):
        super().__init__()
        self.used = nn.Linear(16, 16)
        self.unused = nn.Linear(16, 16)  # a linear map the forward never calls

    def forward(self, x):
        return self.used(x)


def test_a_layer_calibration_never_reaches_is_kept_with_the_reason():
    torch.manual_seed(0)
    model = WithUnusedBranch()
    report = bigperf.swap(model, "int8", calibration=[torch.randn(4, 16)], min_sqnr=20)
    kept = dict(report.kept)
    assert "unused" in kept and "never reached" in kept["unused"]
    assert [c.name for c in report.changes] == ["used"]
    assert type(model.unused) is nn.Linear


def test_a_non_finite_replacement_fails_any_gate():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16))
    with torch.no_grad():
        model[0].weight[0, 0] = 1e5  # finite in fp32, Inf in fp16
    x = torch.randn(4, 16)
    assert torch.isfinite(model(x)).all()
    report = bigperf.swap(model, bigperf.FusedMixedPrecision(torch.float16), calibration=[x], min_sqnr=-1000)
    kept = dict(report.kept)
    assert "0" in kept and "not finite" in kept["0"], report.kept
    assert type(model[0]) is nn.Linear


def test_without_min_sqnr_an_unreached_layer_reports_no_number():
    model = WithUnusedBranch()
    report = bigperf.swap(model, "int8", calibration=[torch.randn(2, 16)], dry_run=True)
    by_name = {c.name: c for c in report.changes}
    assert by_name["unused"].sqnr_db is None and by_name["used"].sqnr_db > 20


@pytest.mark.parametrize("sqnr,expected", [(None, "never reached"), (-math.inf, "not finite"),
                                           (float("nan"), "SQNR nan"), (10.0, "SQNR 10.0"), (40.0, None)])
def test_gate_reason(sqnr, expected):
    reason = gate_reason(sqnr, 30)
    assert (reason is None) if expected is None else (expected in reason)
