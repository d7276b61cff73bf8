"""Object storage: the single-tensor safetensors object format and the stores that hold objects."""
