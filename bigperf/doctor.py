"""`bigperf doctor`: what this machine can run, and why not the rest."""

from __future__ import annotations

import platform

import torch
from rich.console import Console
from rich.table import Table

from bigperf import _ext


def _triton_version() -> str:
    try:
        import triton
        return triton.__version__
    except ImportError as error:
        return f"not importable ({error})"


def _backend_table(device: torch.device) -> Table:
    from bigperf.ops.fused_linear import BACKENDS

    table = Table(title=f"candidate paths for torch.ops.bigperf.fused_linear on {device}")
    table.add_column("path")
    table.add_column("usable")
    table.add_column("why not")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    x = torch.empty(1, 64, dtype=dtype, device=device)
    w = torch.empty(64, 64, dtype=dtype, device=device)
    for name, why in BACKENDS.why_not_each(device, x, w, None, None, "none").items():
        table.add_row(name, "yes" if why is None else "no", why or "")
    return table


def _tuning_rows(table: Table) -> None:
    """Where the measured choices live and what this machine has chosen so far."""
    from bigperf import tune

    state = "on" if tune.tuning_enabled() else "off (BIGPERF_TUNE=0: our kernel at M = 1, PyTorch's GEMM above)"
    table.add_row("measured dispatch", f"{state}; budget {tune.budget_s():.2f} s per new call shape "
                                       f"(BIGPERF_TUNE_BUDGET_S)")
    path = tune.cache_path()
    fp = tune.machine_fingerprint()
    section = tune._read_cache_file(path).get(tune.fingerprint_id(fp), {})
    choices = section.get("choices", {})
    counts: dict[str, int] = {}
    for entry in choices.values():
        counts[entry.get("choice", "?")] = counts.get(entry.get("choice", "?"), 0) + 1
    summary = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) or "none yet"
    table.add_row("tuning cache", f"{path} (BIGPERF_CACHE_DIR); {len(choices)} choice(s) for this machine ({summary})")
    recent = tune.cpu_pressure_recent()
    table.add_row("CPU pressure", "not reported by this kernel (/proc/pressure/cpu): tune on a quiet machine"
                  if recent is None else
                  f"{recent:.0%} of the last 10 s some task waited for a CPU; choices measured above "
                  f"{tune.BUSY_PRESSURE:.0%} are not cached" + (" (busy now)" if recent > tune.BUSY_PRESSURE else ""))
    # What else a cache section is keyed on besides the CPU: timings taken against another
    # PyTorch (capability, library ISA caps, fp32 matmul precision) are not reused.
    caps = ", ".join(f"{k}={v}" for k, v in fp["library_isa_env"].items()) or "none"
    table.add_row("tuned for", f"our kernels {fp['cpu_isa']}; torch CPU capability {fp['torch_cpu_capability']}, "
                               f"fp32 matmul precision {fp['torch_fp32_matmul']}, library ISA caps {caps}")


def _layout_rows(table: Table) -> None:
    """The kernel layout an int8 layer holds its weight in here, and why not the other."""
    from bigperf.formats import w8a8_cpu, w8a16_cpu, w8a16_cuda

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    for kind, format_, why in (
            ("W8A8", w8a8_cpu, w8a8_cpu.why_not_hold(cpu, False)),
            ("W8A16", w8a16_cpu, w8a16_cpu.why_not_hold(cpu, True)),
            ("W8A16", w8a16_cuda, w8a16_cuda.why_not_hold(cuda, True))):
        device = "cuda" if format_ is w8a16_cuda else "cpu"
        table.add_row(f"{kind} layers on {device}",
                      f"hold {format_.NAME} (v{format_.VERSION})" if why is None else f"hold int8-rowmajor: {why}")


def run_doctor(console: Console | None = None) -> int:
    console = console or Console()
    info = _ext.build_info()
    table = Table(title="bigperf doctor", show_header=False)
    table.add_column("what")
    table.add_column("value")
    table.add_row("bigperf build", ", ".join(f"{k}={v}" for k, v in info.items()) or "no build metadata found")
    table.add_row("python / platform", f"{platform.python_version()} / {platform.machine()}")
    table.add_row("torch", f"{torch.__version__} (threads: {torch.get_num_threads()})")
    table.add_row("triton", _triton_version())
    cpu = _ext.cpu_module()
    if cpu is None:
        table.add_row("CPU kernels", f"unavailable: {_ext.cpu_unavailable_reason()}")
    else:
        features = [name for name, on in cpu.cpu_features().items() if on]
        table.add_row("CPU features", ", ".join(features) or "none of the vector ISAs")
        table.add_row("CPU ISA paths", f"compiled {list(cpu.compiled_isas())}, runnable {list(cpu.runnable_isas())}")
        try:
            table.add_row("CPU ISA in use", _ext.cpu_isa())
        except (ValueError, RuntimeError) as error:
            table.add_row("CPU ISA in use", f"error: {error}")
        runtime = _ext.thread_runtime()
        table.add_row("CPU kernel threads", f"torch's OpenMP runtime ({runtime})" if runtime != "own" else
                      "bigperf's own pool (BIGPERF_THREADS=own, or torch's OpenMP runtime was not found): "
                      "after a torch op its spin-waiting threads slow the next bigperf CPU kernel (up to "
                      "1.8x at M = 1) unless OMP_WAIT_POLICY=PASSIVE")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            major, minor = torch.cuda.get_device_capability(i)
            table.add_row(f"GPU {i}", f"{torch.cuda.get_device_name(i)} (sm_{major}{minor})")
    else:
        table.add_row("GPU", "none visible to torch (torch.cuda.is_available() is False)")
    cuda_reason = _ext.cuda_unavailable_reason()
    table.add_row("bigperf._C_cuda", "ready" if cuda_reason is None else cuda_reason)
    _layout_rows(table)
    _tuning_rows(table)
    console.print(table)
    console.print(_backend_table(torch.device("cpu")))
    if torch.cuda.is_available():
        console.print(_backend_table(torch.device("cuda")))
    return 0
