"""Op families register the variants they contribute to a benchmark point; here only.

A family is a function `build(ctx) -> iterable of Variant | Skip`, registered with
`@family("name")` in one of FAMILY_MODULES. Adding an op family means one new
module and one line in FAMILY_MODULES; the harness, store, compare, plot and CLI are generic.

Roles: "baseline" (torch.nn.functional.linear in x's dtype — the reference every speedup
is relative to — in fp32, and for fp32 x in bf16: PyTorch's own paths for the same layer),
"ours" (a bigperf op on one backend: these gate CI against the per-machine baseline),
"auto" (a bigperf op called with no backend forced, as a swapped layer calls it: what users
get; these gate CI on any machine against the fastest baseline of the same point, see
bigperf/bench/floor.py), "peer" (another library doing the same job, where installed: for
context, never gating).
"""

from __future__ import annotations

import contextlib
import importlib
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch

from bigperf.bench.harness import copies_for_cold, last_level_cache_bytes, rotating
from bigperf.bench.suites import DTYPES, Point

BASELINE = "torch.linear"            # F.linear (+ the layer's epilogue) in x's dtype
FLOAT_BASELINE = "torch.linear fp32"  # the same in fp32: what the user had before lowering precision
HALF_BASELINE = "torch.linear bf16"   # fp32 x: x and weight in bf16, output cast back (fast on AMX CPUs, GPUs)
AUTO = "auto"                         # the backend name of a variant that forces none
# Backends that are not ours to time per backend: the reference is a correctness oracle, and
# "torch" (the dispatcher's PyTorch paths) is what the baselines time already.
NOT_TIMED_BY_DEFAULT = ("reference", "torch")
FAMILY_MODULES = ("bigperf.bench.cases_linear", "bigperf.bench.cases_int8", "bigperf.bench.cases_sparse")

_FAMILIES: dict[str, Callable[[CaseContext], Iterable[Variant | Skip]]] = {}


@dataclass
class Variant:
    name: str                        # "fused_linear[cpu]", "torch.linear", "fbgemm.dynamic_int8"
    role: str
    family: str
    step: Callable[[], torch.Tensor]  # one call, on the next cold weight copy
    weight_bytes: int                # bytes of weight (and scales) one call reads
    label: str = ""                  # a configuration detail: "w=bf16", "g128"
    backend: str | None = None
    # The fp32 output this variant should match, when not the dense layer's (pruned weights).
    reference: Callable[[], torch.Tensor] | None = None
    # Called once before timing, outside the timed region (an "auto" variant's first call
    # at a new M lets the dispatcher measure its candidates); its time is recorded as prepare_s.
    prepare: Callable[[], object] | None = None
    # The baselines this variant is held to (None: all of them). A variant that keeps its
    # weight in fp32 is not held to the bf16 path, which computes something less precise.
    compare_to: tuple[str, ...] | None = None

    @property
    def id(self) -> str:
        return f"{self.name} {self.label}" if self.label else self.name


@dataclass(frozen=True)
class Skip:
    id: str
    reason: str


def family(name: str):
    def register(build):
        _FAMILIES[name] = build
        return build
    return register


def families() -> dict[str, Callable]:
    for module in FAMILY_MODULES:
        importlib.import_module(module)
    return dict(_FAMILIES)


@dataclass
class CaseContext:
    """One benchmark point's inputs, shared by all families.

    Weights (and their packed, quantised, pruned copies) depend on the layer, not on M: they
    live in `shared`, which the runner keeps while consecutive points use the same layer, so
    packing a 14336x4096 weight happens once per layer rather than once per point.
    """

    point: Point
    device: torch.device
    backends: tuple[str, ...] | None = None  # None: every backend except reference and torch, plus auto
    thorough: bool = False  # also the secondary configurations (group sizes, ...): the full suite
    seed: int = 0
    shared: dict = field(default_factory=dict)

    def __post_init__(self):
        layer, m = self.point.layer, self.point.m
        self.dtype = DTYPES[self.point.dtype]
        g = torch.Generator(device="cpu").manual_seed(self.seed + 1000003 * m + layer.k)
        self.x = torch.randn(m, layer.k, generator=g).to(self.device, self.dtype)
        self.weight_fp32, self.bias_fp32 = self.cached(("master", layer.name, self.seed), self._make_master)
        self.llc_bytes = last_level_cache_bytes(self.device)

    def _make_master(self):
        layer = self.point.layer
        g = torch.Generator(device="cpu").manual_seed(self.seed + layer.n * 31 + layer.k)
        # Scaled like an initialised layer so outputs stay O(1) in fp16/bf16.
        weight = (torch.randn(layer.n, layer.k, generator=g) * layer.k ** -0.5).to(self.device)
        bias = (torch.randn(layer.n, generator=g) * 0.1).to(self.device) if layer.bias else None
        return weight, bias

    @property
    def layer(self):
        return self.point.layer

    @property
    def activation(self) -> str:
        return self.point.layer.activation

    def bias(self, dtype: torch.dtype | None = None) -> torch.Tensor | None:
        if self.bias_fp32 is None:
            return None
        return self.bias_fp32.to(dtype or self.dtype)

    def cached(self, key, make: Callable):
        """make() once per layer; `key` must name everything else the result depends on."""
        key = (self.point.layer.name, self.device.type, key)
        if key not in self.shared:
            self.shared[key] = make()
        return self.shared[key]

    def copies(self, make_one: Callable[[], object], bytes_per_copy: int, fresh: bool = False) -> list:
        """Enough independent copies of a weight (in any packed form) to rotate them cold.

        Copies are clones of one packed weight, or (fresh=True, for objects that cannot be
        cloned) each made anew.
        """
        first = make_one()
        count = copies_for_cold(bytes_per_copy, self.llc_bytes)
        rest = [make_one() if fresh else _clone(first) for _ in range(count - 1)]
        return [first, *rest]

    def weights(self, dtype: torch.dtype) -> list[torch.Tensor]:
        """Cold copies of the float weight in `dtype` (shared by every variant that uses them)."""
        nbytes = self.weight_fp32.numel() * torch.tensor([], dtype=dtype).element_size()
        return self.cached(("weights", dtype), lambda: self.copies(lambda: self.weight_fp32.to(dtype).contiguous(), nbytes))

    def wants_backend(self, name: str) -> bool:
        return name in self.backends if self.backends is not None else name not in NOT_TIMED_BY_DEFAULT

    def auto_variant(self, fam: str, op: Callable, states: list[tuple], weight_bytes: int,
                     label: str = "", weight_dtype: torch.dtype | None = None) -> list[Variant]:
        """The op with no backend forced, as a swapped layer calls it (role "auto").

        weight_dtype: the float dtype the weight is held in (None: quantised, int8). An fp32
        weight is held to the fp32 and x-dtype paths only (see Variant.compare_to).

        Called plainly, as a layer does (no context manager per call); only when a backend is
        forced around the whole run (BIGPERF_BACKEND, use_backend) is the call wrapped in
        use_backend("auto"), so that this variant still measures the automatic choice.
        """
        if not self.wants_backend(AUTO):
            return []
        from bigperf.ops.registry import forced_backend, use_backend

        if forced_backend() is None:
            call = op
        else:
            def call(*state):
                with use_backend(AUTO):
                    return op(*state)
        step = rotating(call, states)
        compare_to = (BASELINE, FLOAT_BASELINE) if weight_dtype == torch.float32 else None
        return [Variant(f"{fam}[{AUTO}]", "auto", fam, step, weight_bytes, label=label, backend=AUTO,
                        prepare=lambda: call(*states[0]), compare_to=compare_to)]

    def backend_variants(self, table, fam: str, op: Callable, args: tuple, states: list[tuple],
                         weight_bytes: int, label: str = "") -> list[Variant | Skip]:
        """A variant per backend of a bigperf op's table that can serve this call.

        `args` is one concrete call (for why_not), `states` the per-copy argument tuples. A
        backend with several paths ("torch:fp32", "torch:bf16") is one variant: use_backend
        forces a backend, and the dispatcher picks among its paths.
        """
        import bigperf

        paths: dict[str, list] = {}  # backend name -> its paths, in registration order
        for key, backend in table.backends.items():
            paths.setdefault(getattr(backend, "name", key), []).append(backend)
        out: list[Variant | Skip] = []
        for name, backends in paths.items():
            if not self.wants_backend(name):
                continue
            vid = f"{fam}[{name}]" + (f" {label}" if label else "")
            # The dispatcher's PyTorch paths, when asked for by name: context, not our kernel.
            role = "peer" if name == "torch" else "ours"
            if name == "triton" and self.device.type != "cuda":
                out.append(Skip(vid, "Triton on CPU runs in the interpreter: its timings mean nothing"))
                continue
            reasons = [backend.why_not(*args) for backend in backends]
            if all(why is not None for why in reasons):
                out.append(Skip(vid, "; ".join(dict.fromkeys(reasons))))
                continue

            def call(*state, _backend=name):
                with bigperf.use_backend(_backend):
                    return op(*state)

            out.append(Variant(f"{fam}[{name}]", role, fam, rotating(call, states), weight_bytes,
                               label=label, backend=name))
        return out


def _clone(obj):
    if obj is None:
        return None
    if isinstance(obj, torch.Tensor):
        return obj.clone()
    if isinstance(obj, tuple):
        return tuple(_clone(o) for o in obj)
    if isinstance(obj, torch.nn.Module):
        import copy
        return copy.deepcopy(obj)
    raise TypeError(f"cannot copy a {type(obj).__name__} for weight rotation")


@contextlib.contextmanager
def quiet_deprecations():
    """torch.ao.quantization warns on every use; the peers that need it are still the reference."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        yield


def build_case(point: Point, device: torch.device, ops: Iterable[str] | None = None,
               backends: Iterable[str] | None = None, thorough: bool = False, shared: dict | None = None,
               ) -> tuple[CaseContext, list[Variant], list[Skip]]:
    """The point's inputs and every variant the selected families contribute (baselines always).

    `shared`: the weight cache of the previous point, reused when the layer is the same.
    """
    ctx = CaseContext(point, device, tuple(backends) if backends else None, thorough,
                      shared=shared if shared is not None else {})
    selected = set(ops) if ops else None
    variants: list[Variant] = []
    skips: list[Skip] = []
    for name, build in families().items():
        if name != "torch" and selected is not None and name not in selected:
            continue
        for item in build(ctx):
            (variants if isinstance(item, Variant) else skips).append(item)
    return ctx, variants, skips


def family_names() -> list[str]:
    return [name for name in families() if name != "torch"]
