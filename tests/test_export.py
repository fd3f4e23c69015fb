"""Exports: transformers loads the HF directory with logit parity; the GGUF file is llama.cpp's deepseek2 layout.

Oracles: transformers itself for HF; for GGUF, `gguf.GGUFReader` (llama.cpp's own reader) for the file's contents
and a NumPy transliteration of llama.cpp's deepseek2 graph that reads nothing but the GGUF file. llama.cpp proper
(via llama-cpp-python, which builds from source in ~15 minutes) is the `slow` test at the end.
"""

import contextlib
import json

import numpy as np
import pytest
import torch
from safetensors import safe_open

from conftest import free_port, micro_config, perturb
from r1lab.checkpoint import load_model
from r1lab.cli import main
from r1lab.export import export_gguf, export_hf
from r1lab.export.gguf import check_supported
from r1lab.model import DeepseekV3ForCausalLM
from r1lab.tokenizer import build_tokenizer, format_chat, save_tokenizer

transformers = pytest.importorskip("transformers")


@pytest.fixture
def gguf():
    return pytest.importorskip("gguf")  # only the GGUF tests need it

TEXTS = ["What is 12 + 7? The answer is 19.", "the cat sat on the mat", "<think>\n3 * 4 = 12\n</think>\nAnswer: 12"]


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A perturbed micro model with a tokenizer, saved as an r1lab checkpoint."""
    path = tmp_path_factory.mktemp("source")
    tokenizer = build_tokenizer(TEXTS * 20, vocab_size=300)
    save_tokenizer(tokenizer, path)
    model = DeepseekV3ForCausalLM(micro_config(vocab_size=300))
    perturb(model, seed=4)
    model.eval().save_pretrained(path)
    return path


def _ids(vocab: int, length: int = 40, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (2, length), generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- HF


def test_hf_export_loads_in_transformers_with_logit_parity(source, tmp_path):
    out = export_hf(source, tmp_path / "hf")
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["DeepseekV3ForCausalLM"] and config["model_type"] == "deepseek_v3"
    assert {"tokenizer.json", "tokenizer_config.json", "generation_config.json", "model.safetensors"} <= {
        p.name for p in out.iterdir()}

    theirs = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ours = load_model(source)
    ids = _ids(300)
    with torch.no_grad():
        assert (ours(ids).logits - theirs(ids).logits).abs().max().item() <= 1e-4

    generation = transformers.GenerationConfig.from_pretrained(out)
    assert (generation.temperature, generation.top_p, generation.eos_token_id) == (0.6, 0.95, 1)
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    text = format_chat([{"role": "user", "content": "What is 12 + 7?"}], add_generation_prompt=True)
    assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text
    with safe_open(out / "model.safetensors", "pt") as f:
        assert any(k.startswith("model.layers.3.") for k in f.keys())  # MTP kept by default


def test_hf_export_bf16_without_mtp(source, tmp_path):
    out = export_hf(source, tmp_path / "bf16", dtype="bfloat16", mtp=False)
    with safe_open(out / "model.safetensors", "pt") as f:
        keys = list(f.keys())
        dtypes = {k: f.get_tensor(k).dtype for k in keys}
    assert not any(k.startswith("model.layers.3.") for k in keys)
    bias = [k for k in keys if k.endswith("e_score_correction_bias")]
    assert bias and all(dtypes[k] == torch.float32 for k in bias)
    assert all(dtype == torch.bfloat16 for k, dtype in dtypes.items() if k not in bias)
    assert json.loads((out / "config.json").read_text())["num_nextn_predict_layers"] == 0

    theirs = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert theirs.dtype == torch.bfloat16  # config.json's dtype is honoured
    ours = load_model(out)  # no MTP to warn about: the config says there is none
    assert ours.config.num_nextn_predict_layers == 0
    theirs_fp32 = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ids = _ids(300, seed=1)
    with torch.no_grad():
        assert (ours(ids).logits - theirs_fp32(ids).logits).abs().max().item() <= 1e-4


def test_export_refuses_to_overwrite_and_rejects_bad_options(source, tmp_path):
    target = tmp_path / "taken"
    target.mkdir()
    (target / "keep.txt").write_text("x")
    with pytest.raises(ValueError, match="exists and is not empty"):
        export_hf(source, target)
    assert (target / "keep.txt").exists()
    export_hf(source, target, force=True)
    assert not (target / "keep.txt").exists() and (target / "config.json").exists()
    with pytest.raises(ValueError, match="dtype='int8'"):
        export_hf(source, tmp_path / "x", dtype="int8")
    with pytest.raises(ValueError, match="is the source"):
        export_hf(source, source, force=True)
    assert not list(tmp_path.glob(".*.tmp"))  # no half-written leftovers


def test_cli_export_hf_verify_and_gguf(source, tmp_path, capsys, gguf):
    assert main(["export", "--to", "hf", "--model", str(source), str(tmp_path / "hf"), "--verify"]) == 0
    assert "max |logit difference| from r1lab" in capsys.readouterr().out
    assert main(["export", "--to", "gguf", "--model", str(source), str(tmp_path / "m.gguf"), "--dtype", "f16"]) == 0
    assert "deepseek2" in capsys.readouterr().out
    assert main(["export", "--to", "gguf", "--model", str(tmp_path / "missing"), str(tmp_path / "x.gguf")]) == 2
    assert "not a checkpoint directory" in capsys.readouterr().err


# --------------------------------------------------------------------------- GGUF


def _fields(reader) -> dict:
    return {k: f.contents() for k, f in reader.fields.items()}


def test_gguf_metadata_tensors_and_vocabulary(source, tmp_path, gguf):
    path = export_gguf(source, tmp_path / "model.gguf")
    reader = gguf.GGUFReader(path)
    meta = _fields(reader)
    cfg = load_model(source).config
    assert meta["general.architecture"] == "deepseek2"
    expected = {
        "block_count": cfg.num_hidden_layers, "embedding_length": cfg.hidden_size,
        "attention.head_count": cfg.num_attention_heads, "attention.head_count_kv": 1,
        "attention.q_lora_rank": cfg.q_lora_rank, "attention.kv_lora_rank": cfg.kv_lora_rank,
        "attention.key_length": cfg.kv_lora_rank + cfg.qk_rope_head_dim, "attention.value_length": cfg.kv_lora_rank,
        "attention.key_length_mla": cfg.qk_head_dim, "attention.value_length_mla": cfg.v_head_dim,
        "rope.dimension_count": cfg.qk_rope_head_dim, "leading_dense_block_count": cfg.first_k_dense_replace,
        "expert_count": cfg.n_routed_experts, "expert_used_count": cfg.num_experts_per_tok,
        "expert_shared_count": cfg.n_shared_experts, "expert_feed_forward_length": cfg.moe_intermediate_size,
        "expert_group_count": cfg.n_group, "expert_group_used_count": cfg.topk_group,
        "expert_gating_func": int(gguf.ExpertGatingFuncType.SIGMOID), "expert_weights_norm": True,
        "vocab_size": cfg.vocab_size,
    }
    assert {k: meta[f"deepseek2.{k}"] for k in expected} == expected
    assert meta["deepseek2.expert_weights_scale"] == pytest.approx(cfg.routed_scaling_factor)

    spec = json.loads((source / "tokenizer.json").read_text())
    vocab = {**spec["model"]["vocab"], **{t["content"]: t["id"] for t in spec["added_tokens"]}}
    tokens = meta["tokenizer.ggml.tokens"]
    assert len(tokens) == cfg.vocab_size and all(tokens[i] == t for t, i in vocab.items())
    assert tokens[len(vocab)] == f"[PAD{len(vocab)}]"
    assert len(meta["tokenizer.ggml.merges"]) == len(spec["model"]["merges"])
    assert meta["tokenizer.ggml.pre"] == "starcoder" and meta["tokenizer.ggml.bos_token_id"] == 0
    types = meta["tokenizer.ggml.token_type"]
    assert types[vocab["<｜User｜>"]] == gguf.TokenType.CONTROL
    assert types[vocab["<think>"]] == gguf.TokenType.USER_DEFINED

    model = load_model(source)
    tensors = {t.name: np.asarray(t.data) for t in reader.tensors}
    assert not any(name.startswith(f"blk.{cfg.num_hidden_layers}.") for name in tensors)  # no MTP
    layer = model.model.layers[1]
    kv_b = layer.self_attn.kv_b_proj.weight.detach().view(cfg.num_attention_heads, -1, cfg.kv_lora_rank)
    same = {
        "token_embd.weight": model.model.embed_tokens.weight,
        "blk.1.attn_k_b.weight": kv_b[:, : cfg.qk_nope_head_dim].transpose(1, 2),
        "blk.1.attn_v_b.weight": kv_b[:, cfg.qk_nope_head_dim:],
        "blk.1.ffn_up_exps.weight": layer.mlp.experts.gate_up_proj[:, cfg.moe_intermediate_size:],
        "blk.1.ffn_down_exps.weight": layer.mlp.experts.down_proj,
        "blk.1.exp_probs_b.bias": layer.mlp.gate.e_score_correction_bias,
    }
    for name, want in same.items():
        np.testing.assert_array_equal(tensors[name], want.detach().numpy(), err_msg=name)


def _deepseek2_logits(gguf, path, ids: list[int]) -> np.ndarray:
    """Logits of a GGUF `deepseek2` model for one sequence, computed from the file alone.

    A NumPy transliteration of llama.cpp's graph (src/models/deepseek2.cpp, absorbed-MLA branch, and build_moe_ffn
    in src/llama-graph.cpp). The GGUF reader gives each tensor in numpy order, the reverse of ggml's; ggml's
    mul_mat(W, x) is then x @ W.T. Float64 throughout.
    """
    reader = gguf.GGUFReader(path)
    meta = _fields(reader)
    W = {t.name: np.asarray(t.data, dtype=np.float64) for t in reader.tensors}
    hp = {k.removeprefix("deepseek2."): v for k, v in meta.items() if k.startswith("deepseek2.")}
    assert "rope.scaling.type" not in hp, "this transliteration covers plain RoPE only"
    eps, heads, lora = hp["attention.layer_norm_rms_epsilon"], hp["attention.head_count"], hp["attention.kv_lora_rank"]
    rot = hp["rope.dimension_count"]
    nope = hp["attention.key_length_mla"] - rot
    kq_scale = 1.0 / np.sqrt(hp["attention.key_length_mla"])
    n = len(ids)

    def norm(x, w):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w

    def rope(x):  # LLAMA_ROPE_TYPE_NORM: adjacent pairs; x [n, ..., rot]
        theta = np.arange(n)[:, None] * hp["rope.freq_base"] ** (-np.arange(0, rot, 2) / rot)
        cos, sin = (f(theta).reshape(n, *([1] * (x.ndim - 2)), rot // 2) for f in (np.cos, np.sin))
        out = np.empty_like(x)
        out[..., 0::2] = x[..., 0::2] * cos - x[..., 1::2] * sin
        out[..., 1::2] = x[..., 0::2] * sin + x[..., 1::2] * cos
        return out

    def swiglu(x, gate, up, down):
        g = x @ gate.T
        return (g / (1 + np.exp(-g)) * (x @ up.T)) @ down.T

    x = W["token_embd.weight"][ids]
    for il in range(hp["block_count"]):
        p = f"blk.{il}."
        h = norm(x, W[p + "attn_norm.weight"])
        q = (norm(h @ W[p + "attn_q_a.weight"].T, W[p + "attn_q_a_norm.weight"]) @ W[p + "attn_q_b.weight"].T)
        q = q.reshape(n, heads, -1)
        kv = h @ W[p + "attn_kv_a_mqa.weight"].T
        latent = norm(kv[:, :lora], W[p + "attn_kv_a_norm.weight"])
        k_pe = rope(kv[:, lora:])
        q_absorbed = np.einsum("thd,hcd->thc", q[..., :nope], W[p + "attn_k_b.weight"])  # k_b: [H, lora, nope]
        query = np.concatenate([q_absorbed, rope(q[..., nope:])], -1)
        key = np.concatenate([latent, k_pe], -1)
        scores = np.einsum("thd,sd->hts", query, key) * kq_scale
        scores = np.where(np.tril(np.ones((n, n), bool)), scores, -np.inf)
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        out = np.einsum("hts,sc,hvc->thv", probs, latent, W[p + "attn_v_b.weight"])  # v_b: [H, v, lora]
        x = x + out.reshape(n, -1) @ W[p + "attn_output.weight"].T

        h = norm(x, W[p + "ffn_norm.weight"])
        if il < hp["leading_dense_block_count"]:
            x = x + swiglu(h, W[p + "ffn_gate.weight"], W[p + "ffn_up.weight"], W[p + "ffn_down.weight"])
            continue
        router = 1 / (1 + np.exp(-(h @ W[p + "ffn_gate_inp.weight"].T)))  # sigmoid gating
        select = router + W[p + "exp_probs_b.bias"]
        groups = select.reshape(n, hp["expert_group_count"], -1)
        group_score = np.sort(groups, -1)[..., -2:].sum(-1)
        kept = np.argsort(-group_score, -1, kind="stable")[:, : hp["expert_group_used_count"]]
        masked = np.full_like(groups, -np.inf)
        np.put_along_axis(masked, kept[..., None], np.take_along_axis(groups, kept[..., None], 1), 1)
        chosen = np.argsort(-masked.reshape(n, -1), -1, kind="stable")[:, : hp["expert_used_count"]]
        weights = np.take_along_axis(router, chosen, -1)
        if hp.get("expert_weights_norm"):
            weights = weights / np.maximum(weights.sum(-1, keepdims=True), 6.103515625e-5)
        weights = weights * hp["expert_weights_scale"]
        moe = np.zeros_like(h)
        for t in range(n):
            for e, w in zip(chosen[t], weights[t], strict=True):
                moe[t] += w * swiglu(h[t], W[p + "ffn_gate_exps.weight"][e], W[p + "ffn_up_exps.weight"][e],
                                     W[p + "ffn_down_exps.weight"][e])
        shared = swiglu(h, W[p + "ffn_gate_shexp.weight"], W[p + "ffn_up_shexp.weight"], W[p + "ffn_down_shexp.weight"])
        x = x + moe + shared
    return norm(x, W["output_norm.weight"]) @ W["output.weight"].T


def test_gguf_read_by_llama_cpp_graph_gives_our_logits(source, tmp_path, gguf):
    path = export_gguf(source, tmp_path / "model.gguf")
    ids = _ids(300, length=24, seed=2)[0]
    with torch.no_grad():
        ours = load_model(source)(ids[None]).logits[0].double().numpy()
    theirs = _deepseek2_logits(gguf, path, ids.tolist())
    assert np.abs(ours - theirs).max() <= 1e-4


def test_gguf_rejects_what_llama_cpp_cannot_load(tmp_path, gguf):
    with pytest.raises(ValueError, match="needs q_lora_rank"):
        check_supported(micro_config(q_lora_rank=None))
    with pytest.raises(ValueError, match="n_shared_experts"):
        check_supported(micro_config(n_shared_experts=0))
    model = DeepseekV3ForCausalLM(micro_config(q_lora_rank=None))
    model.save_pretrained(tmp_path / "src")
    with pytest.raises(ValueError, match="dtype='q4'"):
        export_gguf(tmp_path / "src", tmp_path / "m.gguf", dtype="q4")
    with pytest.raises(ValueError, match="needs q_lora_rank"):
        export_gguf(tmp_path / "src", tmp_path / "m.gguf")
    assert not list(tmp_path.glob("*.gguf")) and not list(tmp_path.glob(".*.tmp"))


# --------------------------------------------------------------------------- llama.cpp itself (slow)


@pytest.fixture(scope="session")  # session scope, so it is set up (and skips) before the session's chat model
def llama_cpp():
    return pytest.importorskip("llama_cpp")


@pytest.mark.slow
def test_llama_cpp_greedy_tokens_equal_ours(llama_cpp, gguf, chat_model_dir, tmp_path):
    """llama-cpp-python (built from source, ~15 min on 2 cores) runs our GGUF; 32 greedy tokens match our engine."""
    from r1lab.engine import LLMEngine, SamplingParams
    from r1lab.tokenizer import load_tokenizer

    path = export_gguf(chat_model_dir, tmp_path / "chat.gguf")
    tokenizer = load_tokenizer(chat_model_dir)
    prompts = [format_chat([{"role": "user", "content": q}], add_generation_prompt=True)
               for q in ("What is 6 times 7?", "Say hi", "What is 2 plus 2?")]
    engine = LLMEngine(chat_model_dir)
    f32 = getattr(llama_cpp, "GGML_TYPE_F32", 0)  # an f32 latent cache, like ours (K and V types must match: MLA's
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=512, n_threads=2, verbose=False,  # V is a view of its K)
                          type_k=f32, type_v=f32)
    for prompt in prompts:
        ids = tokenizer.encode(prompt, add_special_tokens=False)
        ours = engine.generate([ids], SamplingParams(temperature=0, max_tokens=32, ignore_eos=True))[0]
        theirs = []  # (llm.generate gets a copy: llama-cpp-python reuses the list it is given as its buffer)
        for token in llm.generate(list(ids), temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0, reset=True):
            theirs.append(token)
            if len(theirs) == 32:
                break
        assert theirs == ours.outputs[0].token_ids, prompt
    for prompt in prompts:  # and llama.cpp splits the text as our tokenizer does
        assert llm.tokenize(prompt.encode(), add_bos=False, special=True) == tokenizer.encode(
            prompt, add_special_tokens=False), prompt


# --------------------------------------------------------------------------- vLLM itself (slow, by hand)

VLLM_PYTHON = "R1LAB_VLLM_PYTHON"  # the python of a virtualenv with vLLM (docs/scale-out.md: vLLM on CPU)


@pytest.fixture(scope="module")
def vllm_python():
    import os

    python = os.environ.get(VLLM_PYTHON)
    if not python:
        pytest.skip(f"set {VLLM_PYTHON} to the python of a virtualenv with vLLM (docs/scale-out.md)")
    return python


@contextlib.contextmanager
def _vllm_server(python: str, model_dir, log_path, extra_env: dict[str, str], *args: str):
    """vLLM's OpenAI server on a free port, up once it lists the model; yields its base URL, stops it on exit."""
    import os
    import subprocess
    import time
    import urllib.request

    port = free_port()
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", **extra_env}
    with open(log_path, "w") as log:  # (the server keeps its own copy of the descriptor)
        process = subprocess.Popen([python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
                                    "--host", "127.0.0.1", "--port", str(port), "--max-model-len", "512",
                                    "--dtype", "float32", "--gpu-memory-utilization", "0.5", *args],
                                   stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 600
        while True:
            if process.poll() is not None:
                pytest.fail(f"vLLM exited with {process.returncode}:\n" + log_path.read_text()[-3000:])
            if time.monotonic() > deadline:
                pytest.fail("vLLM did not come up within 10 minutes:\n" + log_path.read_text()[-3000:])
            try:
                urllib.request.urlopen(f"{url}/models", timeout=2)
                break
            except OSError:
                time.sleep(2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.mark.slow
def test_vllm_serves_hf_export_with_our_greedy_replies(vllm_python, tmp_path):
    """vLLM serves `models/tiny-r1` exported to HF: every greedy chat reply equals our engine's, with the thinking
    split off by `--reasoning-parser deepseek_r1`. vLLM's CPU MLA kernel is built for DeepSeek's latent size
    only (512 + 64), so this tiny model runs vLLM's MHA path (VLLM_MLA_DISABLE=1); the next test covers MLA."""
    from openai import OpenAI

    from r1lab.config import SHIPPED_MODELS_DIR
    from r1lab.engine import LLMEngine, SamplingParams
    from r1lab.tasks import problems

    model_dir = SHIPPED_MODELS_DIR / "tiny-r1"
    export_hf(model_dir, tmp_path / "hf")
    with _vllm_server(vllm_python, tmp_path / "hf", tmp_path / "vllm.log", {"VLLM_MLA_DISABLE": "1"},
                      "--reasoning-parser", "deepseek_r1") as url:
        client = OpenAI(base_url=url, api_key="unused")
        questions = [p.prompt for p in problems("countdown", 2, "heldout", 8, seed=0)]
        chats = [format_chat([{"role": "user", "content": q}], add_generation_prompt=True) for q in questions]
        ours = LLMEngine(model_dir).generate(chats, SamplingParams(temperature=0, max_tokens=64))
        for question, mine in zip(questions, ours, strict=True):
            reply = client.chat.completions.create(model=str(tmp_path / "hf"), temperature=0, max_tokens=64,
                                                   messages=[{"role": "user", "content": question}])
            message = reply.choices[0].message
            extra = message.model_extra or {}
            thinking = extra.get("reasoning") or extra.get("reasoning_content")  # (newer vLLM: `reasoning`)
            assert thinking, message
            assert f"{thinking}</think>{message.content}" == mine.outputs[0].text, question


@pytest.mark.slow
def test_vllm_mla_path_gives_our_greedy_tokens(vllm_python, tmp_path):
    """A model with DeepSeek's latent size (kv_lora_rank 512, rope 64) runs vLLM's CPU MLA kernels; 32 greedy
    tokens of random prompts equal our engine's."""
    import dataclasses
    import shutil

    from openai import OpenAI

    from r1lab.config import SHIPPED_MODELS_DIR, preset
    from r1lab.engine import LLMEngine, SamplingParams

    model = DeepseekV3ForCausalLM(dataclasses.replace(preset("tiny"), kv_lora_rank=512, qk_rope_head_dim=64))
    model.init_weights(seed=0)
    model.eval().save_pretrained(tmp_path / "r1lab")
    for name in ("tokenizer.json", "tokenizer_config.json"):  # the shipped tokenizer has the tiny preset's vocab
        shutil.copy(SHIPPED_MODELS_DIR / "tiny-r1" / name, tmp_path / "r1lab" / name)
    export_hf(tmp_path / "r1lab", tmp_path / "hf")
    with _vllm_server(vllm_python, tmp_path / "hf", tmp_path / "vllm.log", {}) as url:
        client = OpenAI(base_url=url, api_key="unused")
        engine = LLMEngine(tmp_path / "r1lab")
        for seed in range(4):
            prompt = torch.randint(8, 1000, (24,), generator=torch.Generator().manual_seed(seed)).tolist()
            ours = engine.generate([prompt], SamplingParams(temperature=0, max_tokens=32, ignore_eos=True))[0]
            reply = client.completions.create(model=str(tmp_path / "hf"), prompt=prompt, temperature=0, max_tokens=32,
                                              extra_body={"ignore_eos": True, "return_token_ids": True})
            assert (reply.choices[0].model_extra or {}).get("token_ids") == ours.outputs[0].token_ids, seed
