"""Model loading and hook validation through TransformerLens 4's TransformerBridge."""

import pytest
import torch

from sae.activations.harvest import harvest
from sae.core.errors import ConfigError
from sae.lm.bridge import hook_width, load_language_model, validate_hook
from sae.lm.config import ModelConfig
from sae.text.sources import DataConfig


@pytest.fixture(scope="module")
def smollm2():
    return load_language_model(ModelConfig(name="embedded:smollm2", alias="smollm2", layer=2))


def test_embedded_model_is_the_real_pretrained_smollm2(smollm2):
    assert (smollm2.cfg.n_layers, smollm2.cfg.d_model) == (30, 576)
    tokens = smollm2.to_tokens(["The capital of France is Paris. The capital of Germany is Berlin."])
    with torch.inference_mode():
        loss = smollm2(tokens, return_type="loss").item()
    assert loss < 4.0  # a random 49k-vocabulary model would sit near ln(49152) ≈ 10.8


def test_unknown_hook_lists_the_valid_ones(smollm2):
    with pytest.raises(ConfigError) as err:
        validate_hook(smollm2, ModelConfig(name="embedded:smollm2", alias="s", layer=2, hook="hook_mlp_outt"))
    assert (
        "model.hook='hook_mlp_outt'" in str(err.value) and "hook_mlp_out" in str(err.value) and "mlp.hook_post" in str(err.value)
    )


def test_layer_out_of_range_names_the_range(smollm2):
    with pytest.raises(ConfigError) as err:
        validate_hook(smollm2, ModelConfig(name="embedded:smollm2", alias="s", layer=30))
    assert "model.layer=30" in str(err.value) and "0..29" in str(err.value)


def test_mlp_output_and_neuron_hooks_have_their_widths(smollm2):
    assert hook_width(smollm2, ModelConfig(name="embedded:smollm2", alias="s", layer=2)) == 576
    assert hook_width(smollm2, ModelConfig(name="embedded:smollm2", alias="s", layer=2, hook="mlp.hook_post")) == 1536


@pytest.mark.slow
def test_random_weight_distilgpt2_shape_boots_and_harvests_its_last_mlp(tmp_path):
    """The reference configuration (distilgpt2, last block's MLP) short of the pretrained weights."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    config = GPT2Config(n_layer=6, n_embd=768, n_head=12, n_positions=1024, vocab_size=512)
    GPT2LMHeadModel(config).save_pretrained(tmp_path)
    # A small byte-level BPE stands in for GPT-2's vocabulary (which needs the hub).
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel()
    from tokenizers import trainers

    trainer = trainers.BpeTrainer(
        vocab_size=512, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(["The quick brown fox jumps over the lazy dog."] * 50, trainer)
    GPT2TokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>").save_pretrained(tmp_path)

    model = ModelConfig(name=str(tmp_path), alias="distilgpt2-random", layer=5)
    bridge = load_language_model(model)
    assert bridge.cfg.n_layers == 6 and bridge.cfg.d_model == 768
    assert hook_width(bridge, model) == 768
    assert hook_width(bridge, ModelConfig(name=str(tmp_path), alias="d", layer=5, hook="mlp.hook_post")) == 3072
    data = DataConfig(source="wiki_offline", alias="wiki", context_length=32)
    chunk = next(harvest(bridge, model, data, batch_size=2))
    assert chunk.shape[1] == 768 and len(chunk) > 0 and torch.isfinite(chunk).all()
