"""swap on model families built from configs in code (no downloads)."""

import copy

import pytest
import torch
from torch import nn

import bigperf
from bigperf.accuracy import sqnr_db
from bigperf.demo_model import build_demo_model

transformers = pytest.importorskip("transformers", reason="transformers is a test extra: pip install -e '.[test]'")


def tiny_llama():
    config = transformers.LlamaConfig(vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, bos_token_id=0, eos_token_id=1)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).eval()


def tiny_gpt2():
    config = transformers.GPT2Config(vocab_size=256, n_embd=128, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=1)
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(config).eval()


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("config", ["bf16", "int8", "int8-dynamic"])
def test_llama_decoder(config):
    model = tiny_llama()
    ids = torch.randint(0, 256, (2, 7), generator=torch.Generator().manual_seed(1))
    expected = logits(model, ids)
    report = bigperf.swap(model, config)
    assert len(report.changes) == 2 * 7 + 1  # q k v o gate up down per layer, and lm_head
    gate = model.model.layers[0].mlp.gate_proj
    assert gate.activation == "silu" and isinstance(model.model.layers[0].mlp.act_fn, nn.Identity)
    assert sqnr_db(expected, logits(model, ids)) > 25


@pytest.mark.parametrize("config", ["bf16", "int8"])
def test_gpt2_conv1d_layers_are_found_by_structure(config):
    model = tiny_gpt2()
    ids = torch.randint(0, 256, (2, 5), generator=torch.Generator().manual_seed(2))
    expected = logits(model, ids)
    report = bigperf.swap(model, config)
    sources = {c.name: c.old for c in report.changes}
    assert sources["transformer.h.0.mlp.c_fc"] == "Conv1D" and sources["lm_head"] == "Linear"
    assert model.transformer.h[0].mlp.c_fc.activation == "gelu_tanh"  # NewGELUActivation, probed
    assert sqnr_db(expected, logits(model, ids)) > 25


def test_accuracy_gate_on_a_real_decoder():
    model = tiny_llama()
    batches = [torch.randint(0, 256, (1, 6), generator=torch.Generator().manual_seed(i)) for i in range(2)]
    report = bigperf.swap(model, bigperf.Int8WeightOnly(), calibration=[{"input_ids": b} for b in batches],
                          min_sqnr=35)
    assert all(c.sqnr_db >= 35 for c in report.changes)
    assert len(report.changes) + len(report.kept) == 15


def test_vit_style_mlp_and_demo_transformer():
    model = build_demo_model(d_model=64, d_ff=128, n_layers=2, vocab=100)
    x = torch.randn(3, 4, 64)
    with torch.no_grad():
        expected = model(x)
    swapped = copy.deepcopy(model)
    report = bigperf.swap(swapped, bigperf.Int8WeightOnly(group_size=64))
    assert len(report.changes) == 2 * 6 + 1
    with torch.no_grad():
        assert sqnr_db(expected, swapped(x)) > 30
