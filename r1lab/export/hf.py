"""Export a checkpoint as a clean Hugging Face directory (transformers, vLLM, SGLang).

Our checkpoints are already in HF's DeepseekV3ForCausalLM layout (`checkpoint.py`), so the export is about what a
foreign runtime expects beside the weights, and about two size options:

* config.json names the architecture (`DeepseekV3ForCausalLM`, model_type `deepseek_v3`) and the dtype; no
  `auto_map`, so no `--trust-remote-code` is needed by transformers >= 4.50, vLLM or SGLang.
* The tokenizer files are copied when the source has them; without a tokenizer the directory still loads, but a
  server cannot take text.
* generation_config.json carries DeepSeek-R1's recommended sampling (temperature 0.6, top-p 0.95) and its
  BOS/EOS ids, which transformers' `generate` and vLLM pick up as defaults.
* `mtp=False` drops the MTP layer (model.layers.{num_hidden_layers}.*, 2% of V3's weights). transformers ignores
  those keys anyway; vLLM and SGLang use them only for speculative decoding.
* `dtype="bfloat16"` halves the size; the routing correction bias stays float32, as in DeepSeek's release (it is
  added to sigmoid scores in [0, 1], where bf16's 8 bits of mantissa would reorder close experts).

The directory appears atomically: it is written beside the target and renamed into place.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from ..checkpoint import load_model, resolve_dtype, save_pretrained

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "tokenizer.model", "vocab.json", "merges.txt")
HF_DTYPES = ("float32", "bfloat16", "float16")
# DeepSeek-R1's usage recommendation: temperature 0.5-0.7 (0.6 suggested) and top-p 0.95.
R1_SAMPLING = {"do_sample": True, "temperature": 0.6, "top_p": 0.95}


def check_target(out: Path, force: bool) -> None:
    """Refuse to overwrite an existing file or non-empty directory unless forced."""
    if out.exists() and (out.is_file() or any(out.iterdir())) and not force:
        raise ValueError(f"{out} exists and is not empty; choose another path or pass force=True (--force)")


def _replace_dir(tmp: Path, out: Path) -> None:
    if out.exists():
        if out.is_dir():
            shutil.rmtree(out)
        else:
            out.unlink()
    os.replace(tmp, out)


def export_hf(model_dir: str | os.PathLike, out_dir: str | os.PathLike, dtype: str = "float32", mtp: bool = True,
              max_shard_size: int | str = "5GB", force: bool = False) -> Path:
    """Write `model_dir`'s model as a transformers/vLLM/SGLang-loadable directory at `out_dir`; returns it."""
    src, out = Path(model_dir), Path(out_dir)
    if dtype not in HF_DTYPES:
        raise ValueError(f"dtype={dtype!r}: allowed values are {', '.join(HF_DTYPES)}")
    if src.resolve() == out.resolve():
        raise ValueError(f"the export target {out} is the source checkpoint; choose another directory")
    check_target(out, force)
    model = load_model(src)
    if not mtp:
        model.mtp = torch.nn.ModuleList()
        model.config.num_nextn_predict_layers = 0
    biases = {id(m): m.gate.e_score_correction_bias.clone() for m in model.moe_layers()}
    model.to(resolve_dtype(dtype))
    for moe in model.moe_layers():
        moe.gate.e_score_correction_bias = biases[id(moe)]

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        save_pretrained(model, tmp, max_shard_size=max_shard_size)
        config = json.loads((tmp / "config.json").read_text())
        config["dtype"] = config["torch_dtype"] = dtype  # transformers 5 reads `dtype`, older readers `torch_dtype`
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        for name in TOKENIZER_FILES:
            if (src / name).is_file():
                shutil.copy2(src / name, tmp / name)
        cfg = model.config
        generation = {"bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id, **R1_SAMPLING}
        (tmp / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def verify_hf(export_dir: str | os.PathLike, seq_len: int = 32, seed: int = 0) -> float:
    """Max |logit difference| between r1lab and transformers loading the same export, both in float32.

    For a float32 export the weights are bit-identical to the source's, so this is parity with the source model.
    """
    import warnings

    import transformers

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*no MTP weights.*")
        ours = load_model(export_dir)
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # it lists the MTP keys it does not use, one line each
    try:
        theirs = transformers.AutoModelForCausalLM.from_pretrained(str(export_dir), dtype=torch.float32).eval()
    finally:
        transformers.logging.set_verbosity(verbosity)
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, ours.config.vocab_size, (2, min(seq_len, ours.config.max_position_embeddings)),
                        generator=gen)
    with torch.no_grad():
        return (ours(ids).logits - theirs(ids).logits).abs().max().item()
