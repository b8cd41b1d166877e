"""Attention modules (the replaceable part of a decoder layer) and their inference caches."""
from mindedit.attention.caches import cache_nbytes, kv_cache
from mindedit.attention.gqa import GQAAttention

__all__ = ["GQAAttention", "cache_nbytes", "kv_cache"]
