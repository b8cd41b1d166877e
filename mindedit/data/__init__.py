"""Tokenizers, shipped assets and (later) token shards for training and evaluation."""
from mindedit.data.tokenizer import load_tokenizer

__all__ = ["load_tokenizer"]
