"""mindedit: convert a trained LLM's attention to MLA or GateSWA by progressive distillation, on MindSpore."""
__version__ = "0.1.0"
