"""Writes activation_tables.h: the tables of vec_activation.h's piecewise-polynomial activations.

    python csrc/cpu/gen_activation_tables.py   # rewrites csrc/cpu/activation_tables.h, prints the errors

Both activations are v times a sigmoid-shaped function F, computed from its left tail Q
(F(v) = Q(|v|) for v < 0, 1 - Q(|v|) otherwise, so nothing cancels in the left tail). Q is
tabulated on [0, span) as one polynomial per cell, W equal cells for a vector of W fp32
lanes, so that a cell's coefficients are picked by one in-register permute per
coefficient (vpermps); past the span Q is taken as 0 (the logistic: see below).

- GELU (erf form): F = Phi, the normal CDF; Q(u) = erfc(u / sqrt 2) / 2 on [0, 4 sqrt 2)
  (Q < 7.7e-9 past it). 8 cells of degree 6 for AVX2, 16 of degree 5 for AVX-512.
- The logistic sigma (SiLU: v sigma(v); GELU-tanh: v sigma(2 sqrt(2/pi) (v + 0.044715 v^3))):
  Q(u) = 1 / (1 + e^u) on [0, 20); past it the kernel computes Q itself (rare lanes: an exp and
  a divide), so SiLU keeps its relative accuracy in the far left tail as torch's does. 16 cells
  of degree 6, AVX-512 only: with 8 cells AVX2 needs degree 9, no cheaper than its exp and divide.

Every table reaches the fp32 rounding of its activation (~1.3e-7 relative to max(1, |f|)),
in about half the instructions of the erf / exp forms they replace and a much shorter
dependency chain (benchmarks/NOTES.md, session 25).

The fit: per cell, least squares at Chebyshev nodes of the cell's local coordinate s in
[0, 1) against float64 (math.erfc, math.exp), coefficients rounded to fp32.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

OUT = Path(__file__).with_name("activation_tables.h")
SQRT_2_OVER_PI = math.sqrt(2 / math.pi)


def normal_tail(u: float) -> float:
    return 0.5 * math.erfc(u / math.sqrt(2))


def logistic_tail(u: float) -> float:
    return 1.0 / (1.0 + math.exp(u))


def sigmoid(z: float) -> float:
    """1 / (1 + e^-z) without overflow."""
    return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))


# name -> (tail, span, {cells: degree}, [(activation name, exact f(v) in float64, z(v) in fp32)])
TABLES = {
    "GeluErfTable": (normal_tail, 4 * math.sqrt(2), {8: 6, 16: 5}, [
        ("gelu", lambda v: v * 0.5 * math.erfc(-v / math.sqrt(2)), lambda v: v)]),
    "LogisticTable": (logistic_tail, 20.0, {16: 6}, [
        ("silu", lambda v: v * sigmoid(v), lambda v: v),
        ("gelu_tanh", lambda v: v * sigmoid(2 * SQRT_2_OVER_PI * (v + 0.044715 * v ** 3)),
         lambda v: (np.float32(2 * SQRT_2_OVER_PI) * (v + np.float32(0.044715) * v * v * v)).astype(np.float32))]),
}


def fit(tail, span: float, cells: int, degree: int) -> np.ndarray:
    """[degree + 1, cells] fp32 coefficients, lowest power first."""
    count = 4 * (degree + 1)
    nodes = 0.5 - 0.5 * np.cos((np.arange(count) + 0.5) * np.pi / count)
    table = np.empty((degree + 1, cells), dtype=np.float32)
    for c in range(cells):
        values = np.array([tail((c + s) * span / cells) for s in nodes])
        table[:, c] = np.polynomial.polynomial.polyfit(nodes, values, degree)
    return table


def evaluate(v: np.ndarray, z: np.ndarray, table: np.ndarray, span: float) -> np.ndarray:
    """The kernel's arithmetic in fp32: v * F(z), F from the table."""
    cells = table.shape[1]
    u = np.abs(z)
    scaled = (u * np.float32(cells / span)).astype(np.float32)
    cell = np.floor(np.minimum(scaled, np.float32(cells - 1)))
    s = (scaled - cell).astype(np.float32).astype(np.float64)
    idx = np.nan_to_num(cell).astype(np.int64)
    q = table[-1, idx].astype(np.float64)
    for j in range(table.shape[0] - 2, -1, -1):
        q = (q * s + table[j, idx]).astype(np.float32).astype(np.float64)
    q = np.where(u < np.float32(span), q, 0.0).astype(np.float32)
    f = np.where(z < 0, q, (np.float32(1) - q).astype(np.float32))
    return (v * f).astype(np.float32)


def worst_error(table: np.ndarray, span: float, exact, z_of) -> float:
    v = np.linspace(-30, 30, 1_200_001).astype(np.float32)
    ref = np.array([exact(x) for x in v.astype(np.float64)])
    out = evaluate(v, z_of(v), table, span).astype(np.float64)
    return float((np.abs(out - ref) / np.maximum(1.0, np.abs(ref))).max())


def main() -> None:
    blocks = []
    for name, (tail, span, degrees, activations) in TABLES.items():
        blocks.append(f"template <int W>\nstruct {name};\n")
        for cells, degree in degrees.items():
            table = fit(tail, span, cells, degree)
            for act, exact, z_of in activations:
                print(f"{name} {cells} cells, degree {degree}: {act} worst |error| / max(1, |f|) = "
                      f"{worst_error(table, span, exact, z_of):.2e}")
            rows = ",\n".join("      {" + ", ".join(f"{x:.9e}f" for x in row) + "}" for row in table)
            blocks.append(
                f"template <>\nstruct {name}<{cells}> {{\n"
                f"  static constexpr int kDegree = {degree};\n"
                f"  static constexpr float kSpan = {span:.9e}f;\n"
                f"  static constexpr float kScale = {np.float32(cells / span):.9e}f;  // cells / span\n"
                f"  alignas(64) static constexpr float coef[{degree + 1}][{cells}] = {{\n{rows}}};\n}};\n")
    OUT.write_text(
        "// Generated by gen_activation_tables.py (run it to change these; it documents the fits).\n"
        "// Each table: the tail Q of a sigmoid-shaped F on [0, kSpan); cell c of W holds coef[j][c],\n"
        "// the power-j coefficient of Q in the cell's local coordinate s = u * kScale - c in [0, 1).\n"
        "#pragma once\n\n"
        "namespace bigperf::cpu {\n\n" + "\n".join(blocks) + "\n}  // namespace bigperf::cpu\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
