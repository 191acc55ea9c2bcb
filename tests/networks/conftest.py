"""Fixtures of the network tests: a tiny random BERT saved to disk (no download)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

TINY_WORDS = (
    "[PAD] [UNK] [CLS] [SEP] [MASK] left right lung lungs infection one two three infected areas area no "
    "bilateral unilateral lower upper middle the of and in , ."
).split()


def make_tiny_bert(path: Path, hidden: int = 32, seed: int = 0) -> Path:
    """Save a random 2-layer BERT (hidden 32) and its word-level tokenizer to ``path``."""
    from transformers import BertConfig, BertModel, BertTokenizer

    path.mkdir(parents=True, exist_ok=True)
    tok = BertTokenizer(vocab={w: i for i, w in enumerate(TINY_WORDS)}, do_lower_case=True)
    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=len(TINY_WORDS),
        hidden_size=hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=64,
    )
    BertModel(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))
