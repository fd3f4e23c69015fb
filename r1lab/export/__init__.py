"""Exports of r1lab checkpoints for other runtimes.

* `export_hf`: a clean Hugging Face directory for transformers, vLLM and SGLang (they all load
  `DeepseekV3ForCausalLM` from config.json + safetensors + tokenizer files).
* `export_gguf`: one GGUF file in llama.cpp's `deepseek2` layout (MLA with the absorbed k_b/v_b split).

Both read a checkpoint directory, so they export exactly what `load_model` would serve. `docs/scale-out.md`
has the serving recipes.
"""

from .gguf import export_gguf
from .hf import export_hf

__all__ = ["export_gguf", "export_hf"]
