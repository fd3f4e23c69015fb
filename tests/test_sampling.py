"""The batched sampler against the distributions it should draw from."""

import pytest
import torch

from r1lab.engine.sampling import SamplingParams, sample_rows


def draw(logits: torch.Tensor, params: SamplingParams, rows: int = 4000, seeded: bool = False) -> torch.Tensor:
    """Token counts over `rows` draws of the same logits, all sampled in one batch."""
    batch = logits.expand(rows, -1)
    gens = [torch.Generator().manual_seed(i) if seeded else None for i in range(rows)]
    samples = sample_rows(batch, [params] * rows, [([], [])] * rows, gens)
    return torch.bincount(torch.tensor([s.token for s in samples]), minlength=logits.shape[-1]).float()


LOGITS = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -3.0])


@pytest.mark.parametrize("seeded", [False, True])
def test_frequencies_follow_the_tempered_softmax(seeded):
    torch.manual_seed(0)
    for temperature in (1.0, 0.5):
        counts = draw(LOGITS, SamplingParams(temperature=temperature), seeded=seeded)
        expected = torch.softmax(LOGITS / temperature, -1) * counts.sum()
        chi2 = ((counts - expected) ** 2 / expected).sum()
        assert chi2 < 25, (temperature, counts, expected)  # 5 degrees of freedom: p < 1e-4 if the sampler is right


def test_top_k_and_top_p_keep_only_the_allowed_tokens_in_proportion():
    torch.manual_seed(1)
    counts = draw(LOGITS, SamplingParams(temperature=1.0, top_k=3))
    assert counts[3:].sum() == 0
    kept = torch.softmax(LOGITS[:3], -1) * counts.sum()
    assert ((counts[:3] - kept) ** 2 / kept).sum() < 20
    # softmax(LOGITS) ~ [.53, .20, .12, .07, ...]: top_p = 0.6 keeps the first two (the second crosses the line)
    counts = draw(LOGITS, SamplingParams(temperature=1.0, top_p=0.6))
    assert counts[2:].sum() == 0 and counts[1] > 0


def test_rows_with_different_settings_share_a_batch():
    logits = torch.stack([LOGITS, LOGITS.flip(0), LOGITS])
    params = [SamplingParams(temperature=0), SamplingParams(temperature=0), SamplingParams(temperature=1, top_k=1)]
    samples = sample_rows(logits, params, [([], [])] * 3, [None] * 3)
    assert [s.token for s in samples] == [0, 5, 0]


def test_seeded_rows_do_not_depend_on_their_neighbours():
    params = SamplingParams(temperature=1.0, seed=3)
    alone = sample_rows(LOGITS[None], [params], [([], [])], [torch.Generator().manual_seed(3)])
    crowd = sample_rows(torch.stack([LOGITS.flip(0), LOGITS]), [SamplingParams(temperature=1.0), params],
                        [([], [])] * 2, [None, torch.Generator().manual_seed(3)])
    assert alone[0].token == crowd[1].token


def test_logprobs_are_of_the_untempered_distribution():
    sample = sample_rows(LOGITS[None], [SamplingParams(temperature=0, logprobs=True, top_logprobs=2)], [([], [])],
                         [None])[0]
    logp = torch.log_softmax(LOGITS, -1)
    assert sample.token == 0 and sample.logprob == pytest.approx(float(logp[0]))
    assert [t for t, _ in sample.top_logprobs] == [0, 1]
