"""End to end: whole transformers models swapped by bigperf, against the fastest plain model.

    python benchmarks/bench_end_to_end.py [--part encoder decoder] [--threads 2] [--reps 8]
                                          [--tokens 32] [--act-dtypes fp32 bf16 autocast] [--json OUT]

(a) encoder: a MiniLM-shaped BertModel (6 layers, hidden 384, intermediate 1536, 12 heads,
    from a BertConfig, random weights, no downloads) on a batch of 12 x 16 tokens (M = 192
    rows per linear layer). Per config (FusedMixedPrecision bf16, Int8WeightOnly,
    Int8Dynamic, Sparse24 and BlockSparse 16x16 at 50% after bigperf.prune) the swapped
    model is timed pair by pair (benchmarks/_pairs.py) against the fastest of the torch fp32
    model, the torch bf16 model (model.to(torch.bfloat16)) and the fp32 model inside
    torch.autocast("cpu", bfloat16), of the same weights (pruned for the sparse configs).
    With --act-dtypes bf16 the swapped model is also run in bf16 (a bf16 model, then
    swapped), and with autocast the swapped fp32 model inside the autocast region, against
    the same three torch models.
(b) decoder: a Llama-shaped LlamaForCausalLM with TinyLlama's widths (hidden 2048,
    intermediate 5632, 32 heads, 4 KV heads, vocab 32000; 4 layers; random weights), greedy
    decoding at batch 1: an 8-token prompt, then --tokens new tokens with the KV cache.
    Decode tokens/s of the fp32 and bf16 models and of the Int8WeightOnly and Int8Dynamic
    swaps, all timed in each round (order rotating), ratios per round against the fp32 model
    and the faster torch model (goal: int8 >= 2.5x fp32).

Lazy tuning: each swapped model's first call is timed separately ("first call", where the
dispatcher measures its candidates) and kept out of the timed pairs. Where
bigperf.swap takes batch_sizes=..., the time of swap(..., batch_sizes=(1, 16, 128)) is
reported too.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
import inspect
import json
import os
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _pairs import paired, quantiles, timed  # noqa: E402  (this folder)

import bigperf  # noqa: E402

CONFIGS = {  # name -> (config, bigperf.prune keyword arguments or None)
    "FusedMixedPrecision(bf16)": (bigperf.FusedMixedPrecision(torch.bfloat16), None),
    "Int8WeightOnly": (bigperf.Int8WeightOnly(), None),
    "Int8Dynamic": (bigperf.Int8Dynamic(), None),
    "Sparse24": (bigperf.Sparse24(), {"pattern": "2:4"}),
    "BlockSparse 16x16@50%": (bigperf.BlockSparse(block=(16, 16), density=0.5),
                              {"pattern": "block", "density": 0.5, "block": (16, 16)}),
}
DECODER_CONFIGS = ("Int8WeightOnly", "Int8Dynamic")
# How the swapped model's activations are held: an fp32 model, a bf16 model, or the fp32 model
# inside torch.autocast("cpu", bfloat16) (where swapped layers compute in bf16, as nn.Linear does).
ACTIVATIONS = ("fp32", "bf16", "autocast")
TUNE_BATCH_SIZES = (1, 16, 128)


def swap_takes_batch_sizes() -> bool:
    return "batch_sizes" in inspect.signature(bigperf.swap).parameters


def swapped(model: nn.Module, config, tune_batch_sizes: bool) -> tuple[nn.Module, dict]:
    """A swapped copy of `model`; its swap time (and the tuning time, with batch_sizes)."""
    model = copy.deepcopy(model)
    info = {}
    start = time.perf_counter()
    if tune_batch_sizes:
        report = bigperf.swap(model, config, batch_sizes=TUNE_BATCH_SIZES)
    else:
        report = bigperf.swap(model, config)
    info["swap_s"] = time.perf_counter() - start
    info["swapped_layers"] = len(report.changes)
    info["kept_layers"] = len(report.kept)
    if tune_batch_sizes:
        info["swap_with_batch_sizes"] = list(TUNE_BATCH_SIZES)
    return model.eval(), info


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.float(), ref.float()
    return float(torch.linalg.vector_norm(out - ref) / torch.linalg.vector_norm(ref).clamp_min(1e-30))


def faster(candidates: dict, reps: int = 3) -> tuple[str, dict]:
    """The faster of several zero-argument calls (interleaved, median of `reps` each)."""
    times = {name: [] for name in candidates}
    for fn in candidates.values():
        fn()  # warm-up
    for _ in range(reps):
        for name, fn in candidates.items():
            times[name].append(timed(fn))
    medians = {name: quantiles(ts)["median"] for name, ts in times.items()}
    return min(medians, key=medians.get), medians


def pair_stats(ta: list[float], tb: list[float]) -> dict:
    """Ratio tb / ta per pair (a = ours, b = torch): >1 means ours is faster."""
    q = quantiles([b / a for a, b in zip(ta, tb)])
    return {"ratio": q["median"], "ratio_q1": q["q1"], "ratio_q3": q["q3"], "pairs": len(ta),
            "ours_s": quantiles(ta)["median"], "torch_s": quantiles(tb)["median"]}


# ----------------------------------------------------------------------------- (a) encoder

def encode(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, autocast: bool = False):
    """One forward of the encoder; with `autocast`, inside torch.autocast("cpu", bfloat16)."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        return model(input_ids=ids, attention_mask=mask)


def encoder(args) -> dict:
    from transformers import BertConfig, BertModel

    cfg = BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536,
                     vocab_size=30522, max_position_embeddings=512)
    torch.manual_seed(args.seed)
    base = BertModel(cfg).eval()
    g = torch.Generator().manual_seed(args.seed)
    ids = torch.randint(0, cfg.vocab_size, (args.batch, args.seq), generator=g)
    mask = torch.ones_like(ids)
    tune = swap_takes_batch_sizes()
    rows = []
    dense: dict = {}  # the plain models (pruned for the sparse configs), fp32 and bf16
    configs = dict(CONFIGS)
    if args.float_copy:  # each config again, keeping an fp32 copy of every weight (opt in)
        configs.update({f"{name} + float copy": (dataclasses.replace(config, float_copy=True), prune)
                        for name, (config, prune) in CONFIGS.items()})
    for name, (config, prune) in configs.items():
        key = repr(prune)
        if key not in dense:
            model = copy.deepcopy(base)
            if prune:
                bigperf.prune(model, **prune)
            dense = {key: (model, copy.deepcopy(model).to(torch.bfloat16))}
        dense32, dense16 = dense[key]
        with torch.inference_mode():
            ref = dense32(input_ids=ids, attention_mask=mask).last_hidden_state
            torch_calls = {"torch fp32": lambda: encode(dense32, ids, mask),
                           "torch bf16": lambda: encode(dense16, ids, mask),
                           "torch autocast": lambda: encode(dense32, ids, mask, autocast=True)}
            best, torch_s = faster(torch_calls)
        for act in args.act_dtypes:
            source = dense16 if act == "bf16" else dense32
            model, info = swapped(source, config, tune)
            with torch.inference_mode():
                call = lambda model=model, ac=act == "autocast": encode(model, ids, mask, ac)  # noqa: E731
                info["first_call_s"] = timed(call)  # lazy tuning at this M happens here
                out = call().last_hidden_state
                ta, tb = paired(call, torch_calls[best], args.reps)
            row = {"part": "encoder", "config": name, "activations": act, "fastest_torch": best,
                   "torch_model_s": torch_s, "rel_err_vs_fp32": rel_err(out, ref), **info, **pair_stats(ta, tb)}
            rows.append(row)
            print(f"  encoder {name:26s} x {act}: {row['ratio']:.2f}x [{row['ratio_q1']:.2f}-{row['ratio_q3']:.2f}] "
                  f"vs {best} ({row['ours_s'] * 1e3:.1f} ms vs {row['torch_s'] * 1e3:.1f} ms; first call "
                  f"{info['first_call_s'] * 1e3:.0f} ms, swap {info['swap_s']:.2f} s)", flush=True)
            del model
    return {"model": "BertModel 6x384 (intermediate 1536, 12 heads)", "batch": args.batch, "seq": args.seq,
            "rows": rows}


# ----------------------------------------------------------------------------- (b) decoder

def greedy(model, prompt: torch.Tensor, new_tokens: int) -> tuple[torch.Tensor, float, float]:
    """Greedy decoding with the KV cache: (tokens, prefill seconds, decode seconds)."""
    start = time.perf_counter()
    out = model(input_ids=prompt, use_cache=True)
    past = out.past_key_values
    token = out.logits[:, -1:].argmax(-1)
    prefill = time.perf_counter() - start
    tokens = [token]
    start = time.perf_counter()
    for _ in range(new_tokens - 1):
        out = model(input_ids=token, past_key_values=past, use_cache=True)
        past = out.past_key_values
        token = out.logits[:, -1:].argmax(-1)
        tokens.append(token)
    return torch.cat(tokens, dim=1), prefill, time.perf_counter() - start


def decoder(args) -> dict:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=2048, intermediate_size=5632, num_attention_heads=32, num_key_value_heads=4,
                      num_hidden_layers=args.decoder_layers, vocab_size=32000, max_position_embeddings=2048,
                      tie_word_embeddings=False)
    torch.manual_seed(args.seed)
    fp32 = LlamaForCausalLM(cfg).eval()
    bf16 = copy.deepcopy(fp32).to(torch.bfloat16)
    g = torch.Generator().manual_seed(args.seed)
    prompt = torch.randint(0, cfg.vocab_size, (1, 8), generator=g)
    steps = args.tokens - 1  # the first new token comes from the prefill

    def decode_s(model):
        return greedy(model, prompt, args.tokens)[2]

    models = {"torch fp32": fp32, "torch bf16": bf16}
    info: dict[str, dict] = {name: {} for name in models}
    extra: dict[str, dict] = {}
    with torch.inference_mode():
        ref_logits = fp32(input_ids=prompt).logits
        ref_tokens = greedy(fp32, prompt, args.tokens)[0]
    tune = swap_takes_batch_sizes()
    for name in DECODER_CONFIGS:
        models[name], info[name] = swapped(fp32, CONFIGS[name][0], tune)
        with torch.inference_mode():
            # The first call tunes lazily (M = 8 for the prompt, then M = 1): kept out of the rounds.
            info[name]["first_call_s"] = timed(lambda m=models[name]: greedy(m, prompt, args.tokens))
            tokens = greedy(models[name], prompt, args.tokens)[0]
            extra[name] = {"prefill_logits_rel_err": rel_err(models[name](input_ids=prompt).logits, ref_logits),
                           # random weights give near-flat logits: greedy tokens diverge early (context only)
                           "tokens_equal_to_fp32": float((tokens == ref_tokens).float().mean())}
    # Every model's decode in each round, the order rotating from round to round (as the bench
    # harness does): a drift of the shared machine hits all of them alike, and the per-round
    # ratios compare models timed seconds apart.
    names = list(models)
    times: dict[str, list[float]] = {name: [] for name in names}
    with torch.inference_mode():
        for name in names:
            decode_s(models[name])  # warm-up
        for r in range(args.decode_reps):
            shift = r % len(names)
            for name in names[shift:] + names[:shift]:
                times[name].append(decode_s(models[name]))
    best = min(("torch fp32", "torch bf16"), key=lambda n: quantiles(times[n])["median"])
    rows = []
    for name in names:
        med = quantiles(times[name])["median"]
        vs_fp32 = quantiles([f / t for f, t in zip(times["torch fp32"], times[name])])
        vs_best = quantiles([b / t for b, t in zip(times[best], times[name])])
        row = {"part": "decoder", "config": name, "tokens_per_s": steps / med, "decode_s": med,
               "rounds": len(times[name]), "speedup_vs_fp32": vs_fp32["median"],
               "speedup_vs_fp32_q1": vs_fp32["q1"], "speedup_vs_fp32_q3": vs_fp32["q3"],
               "fastest_torch": best, "ratio": vs_best["median"], "ratio_q1": vs_best["q1"],
               "ratio_q3": vs_best["q3"], **info[name], **extra.get(name, {})}
        rows.append(row)
        print(f"  decoder {name}: {row['tokens_per_s']:.1f} tokens/s, {row['speedup_vs_fp32']:.2f}x fp32 "
              f"[{row['speedup_vs_fp32_q1']:.2f}-{row['speedup_vs_fp32_q3']:.2f}], {row['ratio']:.2f}x {best}"
              + (f"; first call {row['first_call_s']:.2f} s, swap {row['swap_s']:.2f} s" if "swap_s" in row else ""),
              flush=True)
    return {"model": f"LlamaForCausalLM TinyLlama widths, {args.decoder_layers} layers", "prompt": 8,
            "new_tokens": args.tokens, "rows": rows}


# ----------------------------------------------------------------------------- report

def machine(args) -> dict:
    from bigperf import _ext
    from bigperf.tune import cpu_model

    model = cpu_model()
    try:
        isa = _ext.cpu_isa()
    except Exception:  # noqa: BLE001
        isa = None
    import transformers
    return {"cpu": model, "isa": isa, "torch": torch.__version__, "transformers": transformers.__version__,
            "threads": torch.get_num_threads(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "swap_has_batch_sizes": swap_takes_batch_sizes()}


def print_tables(results: dict, info: dict) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console()
    console = console if console.is_terminal else Console(width=170)
    if "encoder" in results:
        enc = results["encoder"]
        table = Table(title=escape(f"encoder {enc['model']}, batch {enc['batch']} x {enc['seq']} tokens on "
                                   f"{info['cpu']}, {info['threads']} threads: ratio = fastest torch model time / "
                                   "swapped model time, median of pairs [q1–q3]"))
        for col in ("config", "x", "ratio", "[q1–q3]", "fastest torch", "swapped", "torch", "first call", "swap",
                    "rel err"):
            table.add_column(escape(col), justify="left" if col in ("config", "x", "fastest torch") else "right")
        for r in enc["rows"]:
            table.add_row(escape(r["config"]), r["activations"], f"{r['ratio']:.2f}x",
                          f"{r['ratio_q1']:.2f}–{r['ratio_q3']:.2f}", r["fastest_torch"], f"{r['ours_s'] * 1e3:.1f} ms",
                          f"{r['torch_s'] * 1e3:.1f} ms", f"{r['first_call_s'] * 1e3:.0f} ms", f"{r['swap_s']:.2f} s",
                          f"{r['rel_err_vs_fp32']:.1e}", style="red" if r["ratio"] < 0.95 else "")
        console.print(table)
    if "decoder" in results:
        dec = results["decoder"]
        table = Table(title=escape(f"decoder {dec['model']}: greedy, batch 1, {dec['prompt']}-token prompt, "
                                   f"{dec['new_tokens']} new tokens; tokens/s of the decode steps (median of rounds; "
                                   "ratios per round, every model timed in each round); goal int8 >= 2.5x fp32"))
        for col in ("model", "tokens/s", "vs fp32 [q1–q3]", "vs fastest torch", "first call", "swap",
                    "logits rel err"):
            table.add_column(escape(col), justify="left" if col == "model" else "right")
        for r in dec["rows"]:
            swapped_row = "swap_s" in r
            table.add_row(escape(r["config"]), f"{r['tokens_per_s']:.1f}",
                          f"{r['speedup_vs_fp32']:.2f}x [{r['speedup_vs_fp32_q1']:.2f}–{r['speedup_vs_fp32_q3']:.2f}]",
                          f"{r['ratio']:.2f}x {r['fastest_torch']}",
                          f"{r['first_call_s']:.2f} s" if swapped_row else "", f"{r['swap_s']:.2f} s" if swapped_row else "",
                          f"{r['prefill_logits_rel_err']:.1e}" if swapped_row else "",
                          style="dim" if not swapped_row else ("red" if r["speedup_vs_fp32"] < 2.5 else ""))
        console.print(table)
    if not info["swap_has_batch_sizes"]:
        console.print("bigperf.swap has no batch_sizes keyword here: tuning happens lazily (the 'first call' column)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", nargs="+", choices=("encoder", "decoder"), default=["encoder", "decoder"])
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--reps", type=int, default=10, help="encoder pairs per config (default 10)")
    parser.add_argument("--decode-reps", type=int, default=5, help="decoder rounds, every model once each (default 5)")
    parser.add_argument("--batch", type=int, default=12)
    parser.add_argument("--seq", type=int, default=16)
    parser.add_argument("--act-dtypes", nargs="+", choices=ACTIVATIONS, default=list(ACTIVATIONS),
                        help="the swapped encoder's activations: fp32 (an fp32 model swapped), bf16 (a bf16 "
                             "model swapped), autocast (the fp32 model swapped, run in torch.autocast bf16)")
    parser.add_argument("--tokens", type=int, default=32, help="new tokens per greedy decode (default 32)")
    parser.add_argument("--decoder-layers", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--float-copy", action="store_true",
                        help="also run every encoder config with float_copy=True (an fp32 copy of each weight)")
    parser.add_argument("--json", metavar="OUT")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    info = machine(args)
    print(f"# {info['cpu']} ({info['isa']}), torch {info['torch']}, transformers {info['transformers']}, "
          f"{info['threads']} threads, OMP_WAIT_POLICY={info['omp_wait_policy']}", flush=True)
    results = {}
    if "encoder" in args.part:
        results["encoder"] = encoder(args)
    if "decoder" in args.part:
        results["decoder"] = decoder(args)
    print_tables(results, info)
    if args.json:
        out = {"created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "machine": info, "settings": {k: v for k, v in vars(args).items() if k != "json"}, **results}
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
