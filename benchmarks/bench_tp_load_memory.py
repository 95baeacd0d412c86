"""Memory of bigperf.distributed.load per rank (issue #15: no rank holds the full model).

A Llama-shaped model (transformers, random weights) is swapped to a bigperf config and saved
once (bigperf.save). Then, for each way of building the model a rank loads into, fresh ranks
(gloo, 1 thread each) build it, load the checkpoint sharded by the common plan and decode a
few greedy tokens:

    full:  the model built as usual (every fp32 weight allocated and initialised), then load
    meta:  built under bigperf.distributed.meta_parameters(), then load

Reports each rank's peak anonymous resident memory (RssAnon, sampled every millisecond:
what it allocated, not the checkpoint's file mapping) above what it held after its imports,
each build in its own processes, the bytes of tensors it
holds after the load, the checkpoint's size and the fp32 model's, and whether both builds
decode the same tokens. Usage:

    .venv/bin/python benchmarks/bench_tp_load_memory.py [--config int8] [--layers 4] [--world 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_tensor_parallel import PLAN, add_model_arguments, free_port, llama  # noqa: E402

MIB = 2**20


def anonymous_bytes() -> int:
    """Resident memory of this process that is not a mapped file: the tensors it allocated
    (the checkpoint's safetensors mapping is file cache, shared by the ranks, and left out)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("RssAnon:"))


class PeakSampler:
    """The largest anonymous_bytes() seen while the block runs, sampled every millisecond
    (the kernel keeps a peak of all resident memory only, file mappings included)."""

    def __enter__(self):
        self.peak, self._done = anonymous_bytes(), threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._done.wait(0.001):
            self.peak = max(self.peak, anonymous_bytes())

    def __exit__(self, *exc):
        self._done.set()
        self._thread.join()
        self.peak = max(self.peak, anonymous_bytes())


def held_bytes(model) -> int:
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))


def rank_main(rank, world, port, args, how, path, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    import transformers.models.llama.modeling_llama  # noqa: F401 - code, not weights: before the baseline
    from torch.distributed.device_mesh import init_device_mesh

    import bigperf.distributed

    dist.init_process_group("gloo", rank=rank, world_size=world)
    mesh = init_device_mesh("cpu", (world,))
    baseline = anonymous_bytes()
    with PeakSampler() as sampler:
        if how == "meta":
            with bigperf.distributed.meta_parameters():
                model = llama(args)
        else:
            model = llama(args)
        bigperf.distributed.load(model, path, mesh, PLAN)
    peak = sampler.peak - baseline
    ids = torch.arange(2, 10).reshape(1, -1)
    with torch.inference_mode():
        tokens = model.generate(ids, max_new_tokens=args.tokens, min_new_tokens=args.tokens, do_sample=False)
    torch.save({"peak": peak, "held": held_bytes(model), "tokens": tokens[0, 8:]}, Path(out, f"{how}-{rank}.pt"))
    dist.destroy_process_group()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser)
    parser.add_argument("--world", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=4)
    args = parser.parse_args()
    os.environ["BIGPERF_TUNE"] = "0"  # memory, not speed: no tuning in the ranks

    import bigperf

    out = tempfile.mkdtemp(prefix="bigperf-tp-load-")
    path = Path(out, "checkpoint")
    model = llama(args)
    fp32_bytes = held_bytes(model)
    bigperf.swap(model, args.config)
    bigperf.save(model, path)
    checkpoint_bytes = sum(f.stat().st_size for f in path.iterdir())
    del model

    results = {}
    for how in ("full", "meta"):
        mp.start_processes(rank_main, args=(args.world, free_port(), args, how, path, out), nprocs=args.world,
                           start_method="spawn")
        results[how] = [torch.load(Path(out, f"{how}-{r}.pt")) for r in range(args.world)]

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    print(f"CPU: {cpu}; torch {torch.__version__}; config {args.config}; {args.world} ranks; {args.layers} layers, "
          f"hidden {args.hidden}, intermediate {args.intermediate}, vocab {args.vocab}")
    print(f"  fp32 model {fp32_bytes / MIB:.1f} MiB; checkpoint ({args.config}) {checkpoint_bytes / MIB:.1f} MiB")
    for how, ranks in results.items():
        print(f"  {how:5s} peak above imports, per rank: "
              + ", ".join(f"{r['peak'] / MIB:.1f} MiB" for r in ranks)
              + f"; tensors held after load: " + ", ".join(f"{r['held'] / MIB:.1f} MiB" for r in ranks))
    same = all(torch.equal(a["tokens"], b["tokens"]) for a, b in zip(results["full"], results["meta"]))
    print(f"  same greedy tokens (full vs meta build): {same}")


if __name__ == "__main__":
    main()
