"""Checkpoints in Hugging Face's DeepseekV3ForCausalLM layout: safetensors only, single file or sharded.

One loader serves every source: our own saves, transformers' saves and DeepSeek's released FP8 weights.
Each tensor in the files is mapped by name to a slot in our model (`_slot_for`); FP8 block dequantisation is a
step of that loader, not a second path. Errors are collected and reported together (missing keys, unexpected
keys, shape mismatches), so a wrong checkpoint fails once with the full picture.

Writes are atomic per file (temp file + fsync + rename), and the index is written last, so an interrupted save
never leaves a directory that claims shards it does not have.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes

from .config import ModelConfig
from .model import DeepseekV3ForCausalLM

FP8_BLOCK = 128
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
_LAYER_KEY = re.compile(r"^model\.layers\.(\d+)\.(.+)$")


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read or does not fit the model; the message lists every problem found."""


# --------------------------------------------------------------------------- FP8 block quantisation


def dequantize_fp8(weight: torch.Tensor, scale_inv: torch.Tensor, block: int = FP8_BLOCK) -> torch.Tensor:
    """W = fp8 * scale_inv[i // block, j // block], in fp32. Edge blocks may be partial (576 rows -> 5 blocks)."""
    rows, cols = weight.shape
    expected = (-(-rows // block), -(-cols // block))
    if tuple(scale_inv.shape) != expected:
        raise CheckpointError(f"FP8 scale shape {tuple(scale_inv.shape)} does not fit weight {rows}x{cols} "
                              f"with {block}x{block} blocks (expected {expected})")
    scale = scale_inv.float().repeat_interleave(block, 0)[:rows].repeat_interleave(block, 1)[:, :cols]
    return weight.float() * scale


def quantize_fp8(weight: torch.Tensor, block: int = FP8_BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-block absmax quantisation to float8_e4m3fn, the inverse of `dequantize_fp8` up to rounding."""
    rows, cols = weight.shape
    w = weight.float()
    pad = torch.zeros(-(-rows // block) * block, -(-cols // block) * block)
    pad[:rows, :cols] = w
    blocks = pad.view(pad.shape[0] // block, block, pad.shape[1] // block, block)
    amax = blocks.abs().amax(dim=(1, 3)).clamp(min=1e-12)
    scale_inv = amax / torch.finfo(torch.float8_e4m3fn).max
    scale = scale_inv.repeat_interleave(block, 0)[:rows].repeat_interleave(block, 1)[:, :cols]
    return (w / scale).to(torch.float8_e4m3fn), scale_inv


def _fp8_quantisable(name: str) -> bool:
    # As in the released weights: attention, dense-FFN and expert projections; not the router, eh_proj,
    # embeddings, head or norms.
    return (name.endswith(("_proj.weight", "_proj_with_mqa.weight")) and ".eh_proj." not in name
            and name.startswith("model.layers."))


# --------------------------------------------------------------------------- name mapping


def hf_state_dict(model: DeepseekV3ForCausalLM) -> dict[str, torch.Tensor]:
    """Our parameters under HF names: experts unstacked, MTP at layer index num_hidden_layers (+ copies of the
    shared embedding and head, as DeepSeek's checkpoints store them)."""
    cfg = model.config
    out: dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict().items():
        if name.startswith("mtp."):
            depth, rest = name[4:].split(".", 1)
            name = f"model.layers.{cfg.num_hidden_layers + int(depth)}.{rest}"
        if name.endswith("mlp.experts.gate_up_proj"):
            prefix = name[: -len(".gate_up_proj")]
            for i, w in enumerate(tensor):
                gate, up = w.chunk(2, dim=0)
                out[f"{prefix}.{i}.gate_proj.weight"] = gate
                out[f"{prefix}.{i}.up_proj.weight"] = up
        elif name.endswith("mlp.experts.down_proj"):
            prefix = name[: -len(".down_proj")]
            for i, w in enumerate(tensor):
                out[f"{prefix}.{i}.down_proj.weight"] = w
        elif cfg.tie_word_embeddings and name == "lm_head.weight":
            continue
        else:
            out[name] = tensor
    for depth in range(cfg.num_nextn_predict_layers):
        prefix = f"model.layers.{cfg.num_hidden_layers + depth}"
        out[f"{prefix}.embed_tokens.weight"] = model.model.embed_tokens.weight
        out[f"{prefix}.shared_head.head.weight"] = model.lm_head.weight
    return out


def _slot_for(name: str, cfg: ModelConfig) -> tuple[str, int | None, int | None] | None:
    """Map an HF key to (our state-dict name, expert index or None, row offset for gate/up halves).

    Returns None for keys that exist only as copies (the MTP layer's embedding and head)."""
    layer_match = _LAYER_KEY.match(name)
    if layer_match and int(layer_match.group(1)) >= cfg.num_hidden_layers:
        depth = int(layer_match.group(1)) - cfg.num_hidden_layers
        rest = layer_match.group(2)
        if rest in ("embed_tokens.weight", "shared_head.head.weight"):
            return None
        name = f"mtp.{depth}.{rest}"
        if depth >= cfg.num_nextn_predict_layers:
            return (name, None, None)  # reported as unexpected
    expert = re.match(r"^(.*\.mlp\.experts)\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$", name)
    if expert:
        prefix, index, kind = expert.group(1), int(expert.group(2)), expert.group(3)
        if kind == "down_proj":
            return (f"{prefix}.down_proj", index, None)
        return (f"{prefix}.gate_up_proj", index, 0 if kind == "gate_proj" else cfg.moe_intermediate_size)
    return (name, None, None)


# --------------------------------------------------------------------------- reading


def _checkpoint_files(path: Path) -> list[Path]:
    if path.is_file():
        if path.suffix in PICKLE_SUFFIXES:
            raise CheckpointError(_pickle_message(path))
        return [path]
    if not path.is_dir():
        raise CheckpointError(f"no checkpoint at {path}")
    index = path / "model.safetensors.index.json"
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise CheckpointError(f"{index} is not a valid safetensors index: {e}") from None
        files = sorted({path / f for f in weight_map.values()})
        absent = [f.name for f in files if not f.exists()]
        if absent:
            raise CheckpointError(f"{index} names shards that are missing: {', '.join(absent)}")
        return files
    files = sorted(path.glob("*.safetensors"))
    if files:
        return files
    pickles = [p for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES]
    if pickles:
        raise CheckpointError(_pickle_message(pickles[0]))
    raise CheckpointError(f"no *.safetensors files in {path}")


def _pickle_message(path: Path) -> str:
    return (f"refusing to load {path}: pickle checkpoints (.bin/.pt) can execute arbitrary code when loaded. "
            "Convert it to safetensors in a trusted environment (for example transformers' save_pretrained "
            "with safe_serialization=True) and load that instead.")


def _open(file: Path):
    try:
        return safe_open(str(file), framework="pt")
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise CheckpointError(f"cannot read {file}: {e}") from None


def iter_checkpoint(path: str | Path) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (HF name, fp32-or-native tensor) for every weight, FP8 weights already dequantised."""
    for file in _checkpoint_files(Path(path)):
        with _open(file) as f:
            keys = set(f.keys())
            for key in sorted(keys):
                if key.endswith("_scale_inv"):
                    continue
                tensor = f.get_tensor(key)
                if tensor.dtype == torch.float8_e4m3fn:
                    scale_key = key + "_scale_inv"
                    if scale_key not in keys:
                        raise CheckpointError(f"{key} is float8 but {scale_key} is missing from {file.name}")
                    tensor = dequantize_fp8(tensor, f.get_tensor(scale_key))
                yield key, tensor


def checkpoint_keys(path: str | Path) -> set[str]:
    keys: set[str] = set()
    for file in _checkpoint_files(Path(path)):
        with _open(file) as f:
            keys.update(k for k in f.keys() if not k.endswith("_scale_inv"))
    return keys


def load_state(model: DeepseekV3ForCausalLM, path: str | Path) -> None:
    """Copy every weight of the checkpoint at `path` into `model`, or raise one error listing all problems."""
    cfg = model.config
    own = model.state_dict()
    # Expert tensors are filled slice by slice; track which slices arrived.
    needed: set[tuple[str, int | None, int | None]] = set()
    for name, tensor in own.items():
        if name.endswith("experts.gate_up_proj"):
            needed |= {(name, i, off) for i in range(tensor.shape[0]) for off in (0, cfg.moe_intermediate_size)}
        elif name.endswith("experts.down_proj"):
            needed |= {(name, i, None) for i in range(tensor.shape[0])}
        else:
            needed.add((name, None, None))
    if cfg.tie_word_embeddings:
        needed.discard(("lm_head.weight", None, None))
    unexpected, mismatched, seen = [], [], set()
    for key, tensor in iter_checkpoint(path):
        slot = _slot_for(key, cfg)
        if slot is None:
            continue
        name, expert, offset = slot
        if slot not in needed:
            unexpected.append(key)
            continue
        target = own[name]
        if expert is not None:
            target = target[expert]
            if offset is not None:
                target = target[offset: offset + cfg.moe_intermediate_size]
        if tuple(tensor.shape) != tuple(target.shape):
            mismatched.append(f"{key}: checkpoint {tuple(tensor.shape)} vs model {tuple(target.shape)}")
            seen.add(slot)  # present, reported as a mismatch rather than as missing
            continue
        with torch.no_grad():
            target.copy_(tensor.to(target.dtype))
        seen.add(slot)
    missing = sorted(_hf_name(slot, cfg) for slot in needed - seen)
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): " + ", ".join(missing[:20]) + (" ..." if len(missing) > 20
                                                                                        else ""))
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): " + ", ".join(sorted(unexpected)[:20]))
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatch(es): " + "; ".join(mismatched[:20]))
    if problems:
        raise CheckpointError(f"checkpoint {path} does not fit the model:\n  " + "\n  ".join(problems))


def _hf_name(slot: tuple[str, int | None, int | None], cfg: ModelConfig) -> str:
    name, expert, offset = slot
    if name.startswith("mtp."):
        depth, rest = name[4:].split(".", 1)
        name = f"model.layers.{cfg.num_hidden_layers + int(depth)}.{rest}"
    if expert is None:
        return name
    prefix = name.rsplit(".", 1)[0]
    kind = "down_proj" if offset is None else ("gate_proj" if offset == 0 else "up_proj")
    return f"{prefix}.{expert}.{kind}.weight"


_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"dtype {dtype!r} is not supported; choose one of: {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


def load_model(path: str | Path, dtype: str | torch.dtype | None = None, device: str | torch.device = "cpu"
               ) -> DeepseekV3ForCausalLM:
    """Build the model described by `path/config.json` and fill it from the safetensors files beside it.

    A checkpoint without MTP weights (transformers' own saves drop them) loads with MTP switched off.
    """
    path = Path(path)
    if path.is_file() and path.suffix in PICKLE_SUFFIXES:
        raise CheckpointError(_pickle_message(path))
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a checkpoint directory (expected config.json + *.safetensors)")
    cfg = ModelConfig.from_file(path)
    if cfg.num_nextn_predict_layers:
        keys = checkpoint_keys(path)
        prefix = f"model.layers.{cfg.num_hidden_layers}."
        if not any(k.startswith(prefix) for k in keys):
            warnings.warn(f"{path} has no MTP weights ({prefix}*); loading with num_nextn_predict_layers=0",
                          stacklevel=2)
            cfg.num_nextn_predict_layers = 0
    with torch.device("meta"):
        model = DeepseekV3ForCausalLM(cfg)
    model = model.to_empty(device=device).to(resolve_dtype(dtype))
    # to_empty leaves buffers uninitialised; recompute the non-persistent rope table and zero the biases
    # before the checkpoint overwrites what it holds.
    from .model import rope_frequencies

    model.inv_freq = rope_frequencies(cfg)[0].to(device)
    for moe in model.moe_layers():
        moe.gate.e_score_correction_bias = torch.zeros_like(moe.gate.e_score_correction_bias, dtype=torch.float32)
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    load_state(model, path)
    return model.eval()


# --------------------------------------------------------------------------- writing


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _parse_size(size: int | str) -> int:
    if isinstance(size, int):
        return size
    units = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}
    match = re.fullmatch(r"\s*([\d.]+)\s*([KMG]I?B)\s*", size.upper())
    if not match:
        raise ValueError(f"max_shard_size {size!r}: use bytes or a string like '2GB'")
    return int(float(match.group(1)) * units[match.group(2)])


def save_pretrained(model: DeepseekV3ForCausalLM, path: str | Path, max_shard_size: int | str = "5GB",
                    fp8: bool = False) -> None:
    """Write config.json and safetensors shards in HF layout; `fp8=True` stores projections as FP8 blocks."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in hf_state_dict(model).items()}
    cfg_dict = model.config.to_dict()
    if fp8:
        for name in [n for n in tensors if _fp8_quantisable(n)]:
            tensors[name], tensors[name + "_scale_inv"] = quantize_fp8(tensors[name])
        cfg_dict["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                                           "weight_block_size": [FP8_BLOCK, FP8_BLOCK]}
    cfg_dict["torch_dtype"] = str(model.dtype).removeprefix("torch.")
    limit = _parse_size(max_shard_size)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name in sorted(tensors):
        nbytes = tensors[name].numel() * tensors[name].element_size()
        if shards[-1] and size + nbytes > limit:
            shards.append({})
            size = 0
        shards[-1][name] = tensors[name]
        size += nbytes
    # Copies of shared tensors (MTP embedding/head) must be separate storage for safetensors.
    for shard in shards:
        for name in shard:
            if name.endswith(("embed_tokens.weight", "shared_head.head.weight")) and ".layers." in name:
                shard[name] = shard[name].clone()
    stale = list(path.glob("model*.safetensors")) + list(path.glob("model.safetensors.index.json"))
    names = (["model.safetensors"] if len(shards) == 1 else
             [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
    for name, shard in zip(names, shards, strict=True):
        _atomic_write(path / name, safetensors_bytes(shard, metadata={"format": "pt"}))
    _atomic_write(path / "config.json", (json.dumps(cfg_dict, indent=2, sort_keys=True) + "\n").encode())
    if len(shards) > 1:
        index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in tensors.values())},
                 "weight_map": {k: n for n, shard in zip(names, shards, strict=True) for k in shard}}
        _atomic_write(path / "model.safetensors.index.json", (json.dumps(index, indent=2) + "\n").encode())
    # Drop files of an earlier save with a different shard count; the new files are already in place.
    keep = set(names) | ({"model.safetensors.index.json"} if len(shards) > 1 else set())
    for old in stale:
        if old.name not in keep:
            old.unlink(missing_ok=True)
