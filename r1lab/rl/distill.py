"""The dense distillation student: the teacher with its routed experts folded into one plain FFN per layer.

R1's distilled models are dense networks that already knew language before they were fine-tuned on the
teacher's 800k verified traces. A from-scratch student trained on a few hundred traces knows nothing else, so
here the student starts from the teacher itself, pruned (as Minitron does before distilling):

* embeddings, attention, norms and the output head are copied unchanged;
* every MoE layer becomes a SwiGLU FFN of `intermediate_size` units: the shared expert's units, then the units
  of the routed experts that received the most routing weight on the distillation data, as many as fit;
* a routed expert's output is weighted by its router in the teacher; in the student it is always on, so its
  down-projection is scaled by the combine weight it received on average per token (its share of the load
  times the mean routed weight). That keeps the FFN's expected output where the teacher had it.
* no MTP module (the student is a plain next-token model).

The result has no routed experts and a little over half the teacher's parameters (tiny: 1.06M of 1.88M);
SFT on the verified traces then recovers what the pruning lost.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from ..checkpoint import load_model
from ..config import ModelConfig
from ..model import DeepseekV3ForCausalLM, MoE, SwiGLU
from .grpo import TOKENIZER_FILES


def expert_usage(teacher: DeepseekV3ForCausalLM, token_batches: list[torch.Tensor]) -> list[torch.Tensor]:
    """Per MoE layer, the mean combine weight each routed expert contributes per token on these batches."""
    layers = teacher.moe_layers()
    totals = [torch.zeros(m.gate.weight.shape[0], dtype=torch.float64) for m in layers]
    hooks, tokens = [], [0]

    def recorder(index: int):
        def hook(module: MoE, args, _output):
            flat = args[0].reshape(-1, args[0].shape[-1])
            routing = module.gate(flat)
            totals[index].index_add_(0, routing.experts.flatten(), routing.weights.flatten().double())
        return hook

    for i, moe in enumerate(layers):
        hooks.append(moe.register_forward_hook(recorder(i)))
    try:
        with torch.no_grad():
            for ids in token_batches:
                teacher(ids)
                tokens[0] += ids.numel()
    finally:
        for h in hooks:
            h.remove()
    return [t / max(tokens[0], 1) for t in totals]


@torch.no_grad()
def fold_experts(moe: MoE, usage: torch.Tensor, width: int) -> SwiGLU:
    """One SwiGLU FFN of `width` units from the shared expert and the most used routed experts."""
    hidden = moe.gate.weight.shape[1]
    gates, ups, downs = [], [], []
    if moe.shared_experts is not None:
        gates.append(moe.shared_experts.gate_proj.weight)
        ups.append(moe.shared_experts.up_proj.weight)
        downs.append(moe.shared_experts.down_proj.weight)
    units = moe.experts.down_proj.shape[-1]
    room = (width - sum(g.shape[0] for g in gates)) // units
    if room < 0:
        raise ValueError(f"intermediate_size {width} cannot hold the shared experts ({gates[0].shape[0]} units)")
    for expert in usage.argsort(descending=True)[:room].tolist():
        gate, up = moe.experts.gate_up_proj[expert].chunk(2, dim=0)
        gates.append(gate)
        ups.append(up)
        downs.append(moe.experts.down_proj[expert] * usage[expert].to(moe.experts.down_proj.dtype))
    ffn = SwiGLU(hidden, width)
    filled = sum(g.shape[0] for g in gates)
    # Units left over (when the width is not a whole number of experts) start at zero: silent until trained.
    for weight, parts, dim in ((ffn.gate_proj.weight, gates, 0), (ffn.up_proj.weight, ups, 0),
                               (ffn.down_proj.weight, downs, 1)):
        weight.zero_()
        weight.narrow(dim, 0, filled).copy_(torch.cat(parts, dim=dim))
    return ffn


def dense_student(teacher_dir: str | Path, token_batches: list[torch.Tensor], out: str | Path) -> dict:
    """Write the folded dense student of the checkpoint at `teacher_dir` to `out` (HF layout, with the teacher's
    tokenizer).

    Returns the parameter counts of both."""
    from ..config import count_parameters

    teacher = load_model(teacher_dir)
    usage = expert_usage(teacher, token_batches)
    cfg = ModelConfig.from_dict({**teacher.config.to_dict(), "first_k_dense_replace": teacher.config.num_hidden_layers,
                                 "num_nextn_predict_layers": 0})
    student = DeepseekV3ForCausalLM(cfg)
    state = {k: v for k, v in teacher.state_dict().items() if not k.startswith("mtp.") and ".mlp." not in k}
    missing = set(student.load_state_dict(state, strict=False).missing_keys)
    layer_usage = iter(usage)  # one entry per MoE layer, in layer order
    for index, layer in enumerate(teacher.model.layers):
        target = student.model.layers[index]
        if isinstance(layer.mlp, MoE):
            target.mlp = fold_experts(layer.mlp, next(layer_usage), cfg.intermediate_size)
        else:
            target.mlp.load_state_dict(layer.mlp.state_dict())
        missing -= {k for k in missing if k.startswith(f"model.layers.{index}.mlp.")}
    if missing:
        raise RuntimeError(f"student weights not set from the teacher: {sorted(missing)}")
    student.save_pretrained(out)
    for name in TOKENIZER_FILES:
        if (Path(teacher_dir) / name).is_file():
            shutil.copy(Path(teacher_dir) / name, Path(out) / name)
    return {"teacher": count_parameters(teacher)["total"], "student": count_parameters(student)["total"]}
