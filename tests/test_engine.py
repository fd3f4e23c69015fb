"""The inference engine against the model's own reference decoding."""

import random

import pytest
import torch

from conftest import micro_config, perturb
from r1lab.engine import EngineConfig, LLMEngine, SamplingParams
from r1lab.model import DeepseekV3ForCausalLM


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = DeepseekV3ForCausalLM(micro_config(max_position_embeddings=512))
    perturb(m, seed=7)
    return m.eval()


def reference_greedy(model, prompt, n):
    seq = torch.tensor([prompt])
    with torch.no_grad():
        for _ in range(n):
            seq = torch.cat((seq, model(seq).logits[:, -1].argmax(-1, keepdim=True)), 1)
    return seq[0, len(prompt):].tolist()


def prompts(n, seed=0, lo=3, hi=40, vocab=97):
    rng = random.Random(seed)
    return [[rng.randrange(2, vocab) for _ in range(rng.randint(lo, hi))] for _ in range(n)]


GREEDY = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)


def test_greedy_equals_repeated_full_forwards(model):
    engine = LLMEngine(model, EngineConfig(block_size=4, num_blocks=200))
    ps = prompts(5)
    outs = engine.generate(ps, GREEDY)
    for p, out in zip(ps, outs, strict=True):
        assert out.outputs[0].token_ids == reference_greedy(model, p, 12)
        assert out.outputs[0].finish_reason == "length"
    engine.block_manager.check_no_leaks()


def test_batched_equals_one_at_a_time_with_chunked_prefill(model):
    ps = prompts(8, seed=1, hi=60)
    batched = LLMEngine(model, EngineConfig(block_size=8, num_blocks=300, max_num_batched_tokens=50)).generate(
        ps, GREEDY)
    single = LLMEngine(model, EngineConfig(block_size=8, num_blocks=300, max_num_seqs=1))
    for p, out in zip(ps, batched, strict=True):
        assert single.generate([p], GREEDY)[0].outputs[0].token_ids == out.outputs[0].token_ids


def test_prefix_hit_gives_identical_output_and_reports_cached_tokens(model):
    engine = LLMEngine(model, EngineConfig(block_size=4, num_blocks=200))
    shared = prompts(1, seed=2, lo=30, hi=30)[0]
    first = engine.generate([shared + [5, 6]], GREEDY)[0]
    second = engine.generate([shared + [5, 6]], GREEDY)[0]
    assert first.num_cached_tokens == 0
    assert second.num_cached_tokens == 28  # 7 full blocks of 4; the last prompt token is always recomputed
    assert first.outputs[0].token_ids == second.outputs[0].token_ids
    other = engine.generate([shared + [9]], GREEDY)[0]
    assert other.num_cached_tokens == 28 and other.outputs[0].token_ids == reference_greedy(model, shared + [9], 12)


def test_preemption_under_block_pressure_keeps_outputs_exact(model):
    ps = prompts(6, seed=3, lo=10, hi=20)
    engine = LLMEngine(model, EngineConfig(block_size=4, num_blocks=24))  # too few blocks for all at once
    outs = engine.generate(ps, GREEDY)
    for p, out in zip(ps, outs, strict=True):
        assert out.outputs[0].token_ids == reference_greedy(model, p, 12)
    engine.block_manager.check_no_leaks()


def test_seeded_sampling_is_reproducible_whatever_the_batch(model):
    params = SamplingParams(temperature=1.0, top_p=0.9, top_k=20, seed=123, max_tokens=10, ignore_eos=True)
    p = prompts(1, seed=4)[0]
    alone = LLMEngine(model, EngineConfig(num_blocks=100)).generate([p], params)[0]
    crowd = LLMEngine(model, EngineConfig(num_blocks=100)).generate(prompts(4, seed=5) + [p], [
        SamplingParams(temperature=1.0, max_tokens=10)] * 4 + [params])[-1]
    assert alone.outputs[0].token_ids == crowd.outputs[0].token_ids


def test_n_samples_stop_tokens_and_logprobs(model):
    engine = LLMEngine(model, EngineConfig(num_blocks=100))
    p = prompts(1, seed=6)[0]
    greedy = reference_greedy(model, p, 12)
    stop_at = greedy[4]
    out = engine.generate([p], SamplingParams(temperature=0, max_tokens=12, stop_token_ids=[stop_at], n=3,
                                              logprobs=True, top_logprobs=3, ignore_eos=True))[0]
    assert len(out.outputs) == 3
    for o in out.outputs:
        assert o.finish_reason == "stop" and o.token_ids == greedy[:greedy.index(stop_at) + 1]
        assert len(o.logprobs) == len(o.token_ids)
        logprob, top = o.logprobs[0]
        assert top[0][0] == o.token_ids[0] and abs(top[0][1] - logprob) < 1e-6 and len(top) == 3


def test_abort_and_no_leaks_after_200_mixed_requests(model):
    engine = LLMEngine(model, EngineConfig(block_size=4, num_blocks=120, max_num_seqs=16))
    rng = random.Random(0)
    live = []
    for i, p in enumerate(prompts(200, seed=7, hi=30)):
        params = SamplingParams(temperature=rng.choice([0, 0.8]), max_tokens=rng.randint(1, 15),
                                seed=i, ignore_eos=rng.random() < 0.5)
        live.append(engine.add_request(p, params))
        if rng.random() < 0.5:
            engine.step()
        if rng.random() < 0.25 and live:
            victim = live.pop(rng.randrange(len(live)))
            engine.abort(victim)
    while engine.has_unfinished():
        engine.step()
    engine.block_manager.check_no_leaks()


def test_abort_frees_blocks_at_once(model):
    engine = LLMEngine(model, EngineConfig(block_size=4, num_blocks=50, enable_prefix_caching=False))
    rid = engine.add_request(prompts(1, lo=20, hi=20)[0], SamplingParams(max_tokens=50))
    engine.step()
    assert engine.block_manager.num_free_blocks < 50
    engine.abort(rid)
    assert engine.block_manager.num_free_blocks == 50 and not engine.has_unfinished()


def test_invalid_requests_are_rejected_clearly(model):
    engine = LLMEngine(model, EngineConfig(num_blocks=50, max_model_len=64))
    with pytest.raises(ValueError, match="context limit is 64"):
        engine.add_request(list(range(2, 80)))
    with pytest.raises(ValueError, match="tokenizer"):
        engine.add_request("text without a tokenizer")
    with pytest.raises(ValueError, match="empty"):
        engine.add_request([])
    for field, value in [("temperature", -1), ("top_p", 0), ("top_k", -3), ("max_tokens", 0), ("n", 0),
                         ("presence_penalty", 3), ("stop", ["a", "b", "c", "d", "e"]), ("top_logprobs", 50)]:
        with pytest.raises(ValueError, match=field):
            SamplingParams(**{field: value})


def test_penalties_change_greedy_choice(model):
    engine = LLMEngine(model, EngineConfig(num_blocks=100))
    p = prompts(1, seed=8)[0]
    plain = engine.generate([p], SamplingParams(temperature=0, max_tokens=20, ignore_eos=True))[0]
    penalised = engine.generate([p], SamplingParams(temperature=0, max_tokens=20, ignore_eos=True,
                                                    frequency_penalty=2.0, presence_penalty=2.0))[0]
    ids = penalised.outputs[0].token_ids
    assert max(ids.count(t) for t in ids) <= max(plain.outputs[0].token_ids.count(t) for t in ids)
    assert ids != plain.outputs[0].token_ids


def test_speculative_mtp_equals_plain_greedy(model):
    ps = prompts(4, seed=9)
    plain = LLMEngine(model, EngineConfig(block_size=4, num_blocks=200)).generate(ps, GREEDY)
    spec_engine = LLMEngine(model, EngineConfig(block_size=4, num_blocks=200, speculative_mtp=True))
    spec = spec_engine.generate(ps, GREEDY)
    for a, b in zip(plain, spec, strict=True):
        assert a.outputs[0].token_ids == b.outputs[0].token_ids
    assert spec_engine.stats["drafted_tokens"] > 0
    spec_engine.block_manager.check_no_leaks()


def test_speculative_accept_path_with_oracle_drafts(model):
    """Drafts that are always right (after the first plain step and after each verification) must all be
    accepted, two tokens per step, output unchanged."""
    ps = prompts(3, seed=10)
    plain = LLMEngine(model, EngineConfig(block_size=4, num_blocks=200)).generate(ps, GREEDY)
    engine = LLMEngine(model, EngineConfig(block_size=4, num_blocks=200, speculative_mtp=True))
    real_draft = engine.runner.draft

    def oracle(seqs, hidden, starts, next_ids):
        logits = real_draft(seqs, hidden, starts, next_ids).clone()  # keeps the MTP cache layer written
        for row, seq in enumerate(seqs):
            last = len(next_ids[row]) - 1
            logits[row, last] = -1e9
            logits[row, last, reference_greedy(model, seq.all_ids, 1)[0]] = 0
        return logits

    real_verify = engine.runner.verify_and_draft

    def oracle_verify(seqs, drafts):
        targets, _ = real_verify(seqs, drafts)  # keeps both cache layers written
        next_drafts = [[reference_greedy(model, seq.all_ids + t[:1], 1)[0],  # after a rejection
                        reference_greedy(model, seq.all_ids + t, 1)[0]]  # after an acceptance
                       for seq, t in zip(seqs, targets, strict=True)]
        return targets, next_drafts

    engine.runner.draft = oracle
    engine.runner.verify_and_draft = oracle_verify
    spec = engine.generate(ps, GREEDY)
    for a, b in zip(plain, spec, strict=True):
        assert a.outputs[0].token_ids == b.outputs[0].token_ids
    assert engine.acceptance_rate == 1.0
    assert engine.stats["steps"] < 3 + 12  # fewer steps than one token per step would need


def test_a_sequence_larger_than_the_cache_ends_with_length_not_a_hang(model):
    engine = LLMEngine(model, EngineConfig(block_size=4, num_blocks=6))  # 24 token slots in all
    with pytest.raises(ValueError, match="KV cache holds only 24"):
        engine.add_request(prompts(1, lo=30, hi=30)[0])
    out = engine.generate([prompts(1, lo=10, hi=10)[0]], SamplingParams(temperature=0, max_tokens=100,
                                                                         ignore_eos=True))[0]
    assert out.outputs[0].finish_reason == "length" and 10 + len(out.outputs[0].token_ids) <= 25
    engine.block_manager.check_no_leaks()


def test_compiled_decode_step_gives_the_eager_output(model):
    """torch.compile'd decode matches eager greedy: batch > 1 and batch 1, the plain width-1 step (a sequence's
    first decode step) and the width-2 speculative verify, and the compiled MTP draft."""
    ps = prompts(3, seed=11)
    eager = LLMEngine(model, EngineConfig(block_size=4, num_blocks=200)).generate(ps, GREEDY)
    engine = LLMEngine(model, EngineConfig(block_size=4, num_blocks=200, compile=True, speculative_mtp=True))
    outs = engine.generate(ps, GREEDY) + engine.generate(ps[:1], GREEDY)
    assert [o.outputs[0].token_ids for o in outs] == [o.outputs[0].token_ids for o in eager + eager[:1]]
    assert engine.stats["drafted_tokens"] > 0
    engine.block_manager.check_no_leaks()


def test_streamed_text_is_the_decoded_reply_at_every_step():
    """The engine extends each reply's text token by token (no whole-reply decode per token); what it shows
    must always be the decode of the tokens so far, and the final text exactly the decode of the reply."""
    from r1lab.config import SHIPPED_MODELS_DIR

    engine = LLMEngine(str(SHIPPED_MODELS_DIR / "tiny-r1"), EngineConfig(max_num_seqs=8))
    tok = engine.tokenizer
    params = SamplingParams(temperature=1.5, max_tokens=40, seed=3, n=4, ignore_eos=True)
    engine.add_request(tok.encode("Make 24 from 3, 8, 1.").ids, params)
    final = None
    while engine.has_unfinished():
        for out in engine.step():
            for o in out.outputs:
                whole = tok.decode(o.token_ids, skip_special_tokens=False)
                assert whole.startswith(o.text) and len(whole) - len(o.text) <= 4, (o.text, whole)
            final = out if out.finished else final
    for o in final.outputs:
        assert o.text == tok.decode(o.token_ids, skip_special_tokens=False)


def test_incremental_detokenizing_waits_for_whole_characters():
    from types import SimpleNamespace

    from r1lab.config import SHIPPED_MODELS_DIR
    from r1lab.engine import tokenizer_from_dir
    from r1lab.engine.sequence import Sequence

    tok = tokenizer_from_dir(SHIPPED_MODELS_DIR / "tiny-r1")
    text = "héllo wörld, 7 × 3 = 21 🙂 done"
    ids = tok.encode(text).ids
    assert len(ids) > len(text.encode()) // 2  # the non-ASCII characters are split into byte tokens
    seq, engine = Sequence("r", 0, [1], GREEDY), SimpleNamespace(tokenizer=tok)
    for i, token in enumerate(ids):
        seq.output_ids.append(token)
        LLMEngine._detokenize(engine, seq)
        assert "\ufffd" not in seq.text and text.startswith(seq.text)
        assert len(seq.text) >= len(tok.decode(ids[:i + 1]).rstrip("\ufffd")) - 1
    assert seq.text == text
