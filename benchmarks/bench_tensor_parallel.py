"""Tensor-parallel decode on the CPU (issue #15): a Llama-shaped model (transformers, from a
config, random weights), swapped to a bigperf config, greedy decode through generate's KV
cache. Two ways to use the machine's cores, timed alternately in one run:

    single: 1 process x T threads, the whole model
    single-1t: the same process at 1 thread (a reference: what one core does alone)
    tp:     T ranks x 1 thread each (gloo), bigperf.distributed.parallelize with the common
            plan (q/k/v/gate/up column-wise, o/down row-wise); with --sharded-by torch,
            torch's own parallelize_module and styles on the plain model, swapped after
            (bigperf/distributed/adopt.py); with --sharded-by torch-after, the swapped model
            sharded by torch's parallelize_module with its own styles (distributed/styles.py)

Reports tokens/s of each (median and quartiles over rounds), their per-round ratio, the
weight bytes each process holds, and one all-reduce of a decode row's time, through the
shared segment the layers use (bigperf/distributed/shm.py) and through gloo. Both sides run with measured dispatch off (BIGPERF_TUNE=0:
our kernel at M = 1, PyTorch's GEMM for the prompt) unless --tune: each process tunes on its
own, and on this shared, loaded machine two processes tuning the same keys picked paths up
to 2x apart (seen: 1 rank x 1 thread against 1 process x 1 thread, the same model, 2x apart
with tuning, 1.04x without), which would be measured instead of tensor parallelism. Usage:

    .venv/bin/python benchmarks/bench_tensor_parallel.py [--config int8] [--layers 4] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import queue
import socket
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _pairs import quantiles  # noqa: E402

PLAN = {r"model\.layers\.\d+\.self_attn\.(q|k|v)_proj": "colwise",
        r"model\.layers\.\d+\.self_attn\.o_proj": "rowwise",
        r"model\.layers\.\d+\.mlp\.(gate|up)_proj": "colwise",
        r"model\.layers\.\d+\.mlp\.down_proj": "rowwise"}


def torch_plan() -> dict:
    """PLAN in torch's spelling, with torch's own styles."""
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

    styles = {"q": ColwiseParallel, "k": ColwiseParallel, "v": ColwiseParallel, "o": RowwiseParallel}
    plan = {f"model.layers.*.self_attn.{name}_proj": style() for name, style in styles.items()}
    plan.update({f"model.layers.*.mlp.{name}_proj": style()
                 for name, style in (("gate", ColwiseParallel), ("up", ColwiseParallel), ("down", RowwiseParallel))})
    return plan


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The Llama shape's options (also bench_tp_load_memory.py's)."""
    parser.add_argument("--config", default="int8")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--intermediate", type=int, default=5632)
    parser.add_argument("--kv-heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=4096)


def llama(args):
    """The Llama-shaped model of add_model_arguments' options, random weights, the same in every process."""
    import transformers

    config = transformers.LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden,
                                      intermediate_size=args.intermediate, num_hidden_layers=args.layers,
                                      num_attention_heads=args.hidden // 128, num_key_value_heads=args.kv_heads,
                                      bos_token_id=0, eos_token_id=1, pad_token_id=1)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).eval()


def build(args):
    import bigperf

    model = llama(args)
    bigperf.swap(model, args.config)
    return model


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def weight_bytes(model) -> int:
    """Bytes of the tensors this process holds (a DTensor's local shard, not its global size)."""
    from torch.distributed.tensor import DTensor

    tensors = [t.to_local() if isinstance(t, DTensor) else t for t in list(model.parameters()) + list(model.buffers())]
    return sum(t.numel() * t.element_size() for t in tensors)


def decode(model, args) -> tuple[float, torch.Tensor]:
    ids = torch.arange(2, 2 + args.prompt).reshape(1, -1)
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(ids, max_new_tokens=args.tokens, min_new_tokens=args.tokens, do_sample=False)
    return time.perf_counter() - start, out[0, args.prompt:]


def all_reduce_us(hidden: int, calls: int = 300) -> dict[str, float]:
    """Median µs of one row-wise all-reduce of a decode row ([1, hidden] fp32): through the
    shared segment (bigperf.distributed.shm, what the layers use on one host) and gloo's."""
    from bigperf.distributed import shm

    row = torch.randn(1, hidden)
    times = {}
    for name, reduce in (("shared memory", lambda: shm.all_reduce(row, dist.group.WORLD)),
                         ("gloo", lambda: dist.all_reduce(row))):
        samples = []
        for _ in range(calls):
            start = time.perf_counter()
            reduce()
            samples.append(time.perf_counter() - start)
        times[name] = quantiles(samples[calls // 10:])["median"] * 1e6
    return times


def rank_main(rank, world, port, args, commands, replies):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    import bigperf.distributed

    dist.init_process_group("gloo", rank=rank, world_size=world)
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh("cpu", (world,))
    if args.sharded_by == "torch":
        import bigperf
        from torch.distributed.tensor.parallel import parallelize_module

        model = parallelize_module(llama(args), mesh, torch_plan())
        bigperf.swap(model, args.config)
    elif args.sharded_by == "torch-after":
        from torch.distributed.tensor.parallel import parallelize_module

        model = parallelize_module(build(args), mesh, torch_plan())
    else:
        model = bigperf.distributed.parallelize(build(args), mesh, PLAN)
    if args.shard_vocab:  # the embedding by torch's own style, the lm_head by bigperf's, logits gathered
        from torch.distributed.tensor import Replicate
        from torch.distributed.tensor.parallel import RowwiseParallel, parallelize_module

        parallelize_module(model, mesh, {"model.embed_tokens": RowwiseParallel(input_layouts=Replicate()),
                                         "lm_head": bigperf.distributed.ColwiseParallel(output_layouts=Replicate())})
    replies.put((rank, "ready", weight_bytes(model), all_reduce_us(args.hidden)))
    while commands[rank].get() == "run":
        seconds, tokens = decode(model, args)
        replies.put((rank, "done", seconds, tokens))
    dist.destroy_process_group()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser)
    parser.add_argument("--threads", type=int, default=2, help="T: ranks, and threads of the single process")
    parser.add_argument("--prompt", type=int, default=8)
    parser.add_argument("--shard-vocab", action="store_true",
                        help="shard the embedding (torch's RowwiseParallel) and the lm_head (column-wise) too")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tune", action="store_true", help="keep measured dispatch on (see above)")
    parser.add_argument("--sharded-by", choices=("bigperf", "torch", "torch-after"), default="bigperf",
                        help="tp ranks: bigperf.distributed.parallelize; torch's parallelize_module then swap; or "
                             "swap then torch's parallelize_module with its own styles")
    args = parser.parse_args()
    world = args.threads
    if not args.tune:
        os.environ["BIGPERF_TUNE"] = "0"  # before bigperf is imported here and in the ranks

    port = free_port()
    ctx = mp.get_context("spawn")
    commands, replies = [ctx.Queue() for _ in range(world)], ctx.Queue()
    ranks = [ctx.Process(target=rank_main, args=(r, world, port, args, commands, replies)) for r in range(world)]
    for p in ranks:
        p.start()
    def reply():
        while True:  # a rank that dies must not leave this process waiting
            try:
                return replies.get(timeout=5)
            except queue.Empty:
                dead = [r for r, p in enumerate(ranks) if not p.is_alive()]
                if dead:
                    raise SystemExit(f"ranks {dead} exited (exit codes {[ranks[r].exitcode for r in dead]})")

    rank_bytes, reduce_us = {}, {}
    for _ in range(world):  # the ranks build and shard while this process waits
        rank, _, nbytes, reduce_us[rank] = reply()
        rank_bytes[rank] = nbytes

    torch.set_num_threads(world)
    single = build(args)
    single_bytes = weight_bytes(single)
    decode(single, args)  # warm-up: tuning, caches

    def run_tp():
        for q in commands:
            q.put("run")
        got = [reply() for _ in range(world)]
        return max(g[2] for g in got), got[0][3]

    def one_thread():
        torch.set_num_threads(1)
        try:
            return decode(single, args)
        finally:
            torch.set_num_threads(world)

    run_tp()  # warm-up
    one_thread()
    single_tps, tp_tps, one_tps, ratios = [], [], [], []
    for i in range(args.rounds):  # alternate, the order flipping each round
        order = ("single", "tp", "single-1t") if i % 2 == 0 else ("single-1t", "tp", "single")
        seconds = {}
        for which in order:
            if which == "single":
                seconds["single"], single_tokens = decode(single, args)
            elif which == "tp":
                seconds["tp"], tp_tokens = run_tp()
            else:
                seconds["single-1t"], _ = one_thread()
        single_tps.append(args.tokens / seconds["single"])
        tp_tps.append(args.tokens / seconds["tp"])
        one_tps.append(args.tokens / seconds["single-1t"])
        ratios.append(tp_tps[-1] / single_tps[-1])
    for q in commands:
        q.put("stop")
    for p in ranks:
        p.join(timeout=60)

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    print(f"CPU: {cpu}; torch {torch.__version__}; config {args.config}; {args.layers} layers, hidden {args.hidden}, "
          f"intermediate {args.intermediate}, vocab {args.vocab}; {args.tokens} tokens after a {args.prompt}-token "
          f"prompt, batch 1; {args.rounds} rounds; measured dispatch {'on' if args.tune else 'off'}; "
          f"tp sharded by {args.sharded_by}")
    for name, values in (("single", single_tps), ("tp", tp_tps), ("single-1t", one_tps), ("tp / single", ratios)):
        q = quantiles(values)
        print(f"  {name:12s} median {q['median']:8.2f}  q1 {q['q1']:8.2f}  q3 {q['q3']:8.2f}"
              f"{'  tokens/s' if name != 'tp / single' else ''}")
    print(f"  weights: single process {single_bytes / 2**20:.1f} MiB; per rank "
          + ", ".join(f"{rank_bytes[r] / 2**20:.1f} MiB" for r in sorted(rank_bytes))
          + f" ({max(rank_bytes.values()) / single_bytes:.2f} of the single process)")
    print(f"  same greedy tokens: {torch.equal(single_tokens, tp_tokens)}")
    print("  one all-reduce of a [1, hidden] fp32 row, median per rank: "
          + "; ".join(f"{name} " + ", ".join(f"{reduce_us[r][name]:.0f} µs" for r in sorted(reduce_us))
                      for name in reduce_us[0]))


if __name__ == "__main__":
    main()
