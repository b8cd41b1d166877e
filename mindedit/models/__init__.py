"""Teacher models: the Qwen3-family decoder, its config and loading from HF directories and GGUF files."""
from mindedit.models.config import ConfigError, ModelConfig
from mindedit.models.loading import from_pretrained, load_config
from mindedit.models.qwen3 import CausalLM

__all__ = ["CausalLM", "ConfigError", "ModelConfig", "from_pretrained", "load_config"]
