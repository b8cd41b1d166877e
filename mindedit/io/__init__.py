"""Reading and writing the files users have: HF safetensors directories and GGUF files (never pickle)."""
