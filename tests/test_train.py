"""The trainer in-process: settings, data and labels, loss terms, exact resume, batch-split invariance,
balancing, atomic checkpoints under a full disk, and the errors a user can cause.

Every run uses a micro model (hidden 32, 3 layers, vocab 300) on a few dozen generated problems, one thread.
"""

import errno
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import micro_config, perturb
from r1lab import CheckpointError, ConfigError, load_model
from r1lab.cli import main as cli_main
from r1lab.model import DeepseekV3ForCausalLM, mtp_loss, sequence_balance_loss
from r1lab.tokenizer import ASSISTANT, EOS, THINK, build_tokenizer, default_corpus, save_tokenizer
from r1lab.train import TrainConfig, read_settings, train
from r1lab.train.data import IGNORE, DataCursor, pack_documents, pretrain_documents, sft_examples, sft_pairs, task_rows
from r1lab.train.loss import expert_loads, sequence_balance_sum, summed_cross_entropy
from r1lab.train.metrics import read_metrics
from r1lab.train.state import LINK, resolve_checkpoint

VOCAB = 300


@pytest.fixture(autouse=True)
def one_thread():
    # Two OpenMP threads on a 2-core machine shared with other jobs slow tiny matmuls 100-fold; one is steady.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def workspace(tmp_path_factory) -> Path:
    """A tokenizer (vocab 300) and the micro model's config.json, shared by every run."""
    root = tmp_path_factory.mktemp("train-ws")
    save_tokenizer(build_tokenizer(default_corpus(per_level=10), vocab_size=VOCAB), root / "tok")
    micro_config(vocab_size=VOCAB).save(root)
    return root


def settings(ws: Path, out: Path, **overrides) -> dict:
    base = dict(out=str(out), model_config=str(ws / "config.json"), tokenizer=str(ws / "tok"),
                tasks=["arithmetic", "linear"], difficulties=[1, 2], per_level=8, seq_len=32, batch_size=4,
                warmup_steps=2, steps=4, progress=False)
    return base | overrides


def run(ws: Path, out: Path, **overrides) -> Path:
    return train(TrainConfig(**settings(ws, out, **overrides)))


def losses(run_dir: Path) -> list[float]:
    return [r["loss"] for r in read_metrics(run_dir)]


def tokenizer(ws: Path):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(ws / "tok" / "tokenizer.json"))


# --------------------------------------------------------------------------- settings


def test_settings_are_validated_with_the_field_and_range_named():
    with pytest.raises(ConfigError, match=r"lr=-1.0: must be a number in \(0.0"):
        TrainConfig(lr=-1.0)
    with pytest.raises(ConfigError, match="kind='rl': allowed values: pretrain, sft"):
        TrainConfig(kind="rl")
    with pytest.raises(ConfigError, match="batch_size=0: must be an integer >= 1"):
        TrainConfig(batch_size=0)
    with pytest.raises(ConfigError, match="init"):
        TrainConfig(init="a", resume="b")
    with pytest.raises(ConfigError, match="unknown setting.*learning_rate"):
        TrainConfig.from_dict({"learning_rate": 1e-3})


def test_settings_files_toml_and_yaml(tmp_path):
    (tmp_path / "a.toml").write_text('lr = 3e-4\nsteps = 7\ntasks = ["linear"]\n')
    (tmp_path / "b.yaml").write_text("train:\n  lr: 0.0003\n  steps: 7\n  tasks: [linear]\n")
    assert read_settings(tmp_path / "a.toml") == read_settings(tmp_path / "b.yaml") == \
        {"lr": 3e-4, "steps": 7, "tasks": ["linear"]}
    (tmp_path / "c.toml").write_text("lr = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        read_settings(tmp_path / "c.toml")
    (tmp_path / "d.yaml").write_text("warmup: 3\n")
    with pytest.raises(ConfigError, match="unknown setting.*warmup"):
        read_settings(tmp_path / "d.yaml")


# --------------------------------------------------------------------------- data and losses


def test_sft_puts_loss_on_the_assistant_reply_only(workspace):
    tok = tokenizer(workspace)
    rows = task_rows(["arithmetic"], [2], per_level=3)
    examples = sft_examples(sft_pairs(rows), tok, seq_len=128)
    for row, ids, labels in zip(rows, examples.ids, examples.labels, strict=True):
        learned = labels != IGNORE
        prompt, reply = tok.decode(ids[~learned].tolist(), skip_special_tokens=False), \
            tok.decode(ids[learned].tolist(), skip_special_tokens=False)
        assert prompt.endswith(ASSISTANT + THINK + "\n") and row["prompt"] in prompt
        assert reply == row["solution"].removeprefix(THINK + "\n") + EOS
        assert torch.equal(labels[learned], ids[learned]) and learned[-1] and not learned[0]


def test_pretraining_blocks_hold_traces_and_plain_problems(workspace):
    rows = task_rows(["linear"], [1], per_level=4)
    docs = pretrain_documents(rows)
    assert len(docs) == 8 and sum("<think>" in d for d in docs) == 4
    examples = pack_documents(docs, tokenizer(workspace), seq_len=16)
    assert all(ids.shape == (16,) for ids in examples.ids) and examples.stats["dropped_tokens"] < 16
    assert all(torch.equal(i, lab) for i, lab in zip(examples.ids, examples.labels, strict=True))


def test_cursor_resumes_the_same_order_and_crosses_epochs():
    straight = DataCursor(10, seed=3)
    first = straight.take(4) + straight.take(4) + straight.take(4)
    resumed = DataCursor(10, seed=3)
    resumed.take(4)
    again = DataCursor(10, seed=3, **{k: v for k, v in resumed.state().items() if k != "num_examples"})
    assert resumed.take(8) == again.take(8) == first[4:]
    assert sorted(first[:10]) == list(range(10)) and straight.epoch == 1


def test_cursor_grouped_by_length_pads_less_and_still_visits_every_example_once_an_epoch():
    import random as stdlib_random

    lengths = [stdlib_random.Random(i).randint(20, 140) for i in range(1000)]
    grouped, plain = DataCursor(1000, seed=1, lengths=lengths, batch=32), DataCursor(1000, seed=1)

    def padding(cursor):
        batches = [cursor.take(32) for _ in range(31)]
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches), batches

    (waste, batches), (waste_plain, _) = padding(grouped), padding(plain)
    assert waste < waste_plain / 2
    seen = [i for b in batches for i in b] + grouped.take(1000 - 31 * 32)
    assert sorted(seen) == list(range(1000)) and grouped.epoch == 1
    again = DataCursor(1000, seed=1, lengths=lengths, batch=32, epoch=0, offset=320)
    assert again.take(64) == [i for b in batches[10:12] for i in b]  # a resumed run sees the same batches
    assert DataCursor(1000, seed=2, lengths=lengths, batch=32).take(32) != batches[0]


def test_loss_terms_agree_with_the_model():
    torch.manual_seed(0)
    model = DeepseekV3ForCausalLM(micro_config())
    perturb(model)
    ids = torch.randint(0, 97, (3, 12))
    out = model.train()(ids, mtp=True)
    sums = summed_cross_entropy(out.logits, out.mtp_logits, ids)
    main = F.cross_entropy(out.logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
    assert torch.allclose(sums[0] / (3 * 11), main) and torch.allclose(sums[1] / (3 * 10), mtp_loss(out, ids))
    # The balance loss over real tokens equals the model's when nothing is padding.
    routing = model.model.layers[1].mlp.gate(torch.randn(36, 32))
    scores, experts = routing.scores.view(3, 12, -1), routing.experts.view(3, 12, -1)
    everything = torch.ones(3, 12, dtype=torch.bool)
    assert torch.allclose(sequence_balance_sum(scores, experts, everything) / 3,
                          sequence_balance_loss(scores, experts))
    assert torch.equal(expert_loads(experts, everything, 8), torch.bincount(experts.flatten(), minlength=8))


# --------------------------------------------------------------------------- runs


def test_resume_continues_exactly(workspace, tmp_path):
    run(workspace, tmp_path / "straight", steps=6)
    run(workspace, tmp_path / "split", steps=3, decay_steps=6, save_every=2)
    resumed = run(workspace, tmp_path / "split", steps=6, resume=str(tmp_path / "split"))
    straight = read_metrics(tmp_path / "straight")
    split = read_metrics(tmp_path / "split")
    assert [r["step"] for r in split] == [1, 2, 3, 4, 5, 6]
    assert max(abs(a["loss"] - b["loss"]) for a, b in zip(straight, split, strict=True)) <= 1e-6
    assert [a["lr"] for a in straight] == [b["lr"] for b in split]
    a, b = load_model(tmp_path / "straight" / LINK), load_model(resumed)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.allclose(x, y, atol=1e-6), name
    assert sorted(p.name for p in (tmp_path / "split").iterdir()) == [LINK, "metrics.jsonl", "step-000006"]


def test_sft_batch_split_does_not_change_the_run(workspace, tmp_path):
    """Variable-length chat examples: batch 4 equals batch 2 x 2 accumulation steps (token-level means)."""
    one = dict(kind="sft", seq_len=64, steps=4)
    run(workspace, tmp_path / "b4", batch_size=4, **one)
    run(workspace, tmp_path / "b2x2", batch_size=2, grad_accum=2, **one)
    a, b = read_metrics(tmp_path / "b4"), read_metrics(tmp_path / "b2x2")
    assert all(abs(x["loss"] - y["loss"]) < 1e-5 and x["expert_load"] == y["expert_load"]
               for x, y in zip(a, b, strict=True))
    assert a[0]["loss_tokens"] < a[0]["tokens"]  # the prompts take no loss


def test_metrics_and_bias_update_follow_the_global_loads(workspace, tmp_path):
    run(workspace, tmp_path / "r", steps=1, bias_gamma=0.01)
    row = read_metrics(tmp_path / "r")[0]
    assert {"step", "loss", "lr", "tokens_per_s", "mtp_loss", "balance_loss", "grad_norm"} <= set(row)
    model = load_model(tmp_path / "r" / LINK)
    moe_layers = [str(i) for i, layer in enumerate(model.model.layers) if hasattr(layer.mlp, "gate")]
    assert set(row["expert_load"]) == set(moe_layers) | {"mtp0"}
    for name in moe_layers:
        load = torch.tensor(row["expert_load"][name], dtype=torch.float)
        # every token picks k experts; tokens in this step = 4 sequences x 32
        assert load.sum() == 4 * 32 * model.config.num_experts_per_tok
        bias = model.model.layers[int(name)].mlp.gate.e_score_correction_bias
        assert torch.equal(bias, 0.01 * torch.sign(load.mean() - load))


def test_init_starts_sft_from_pretrained_weights(workspace, tmp_path):
    pretrained = run(workspace, tmp_path / "pre", steps=2)
    sft = TrainConfig(**settings(workspace, tmp_path / "sft", kind="sft", seq_len=64, steps=2, init=str(pretrained),
                                 model_config=None, tokenizer=None))
    out = train(sft)
    assert json.loads((out / "training_state" / "state.json").read_text())["step"] == 2
    assert (out / "tokenizer.json").read_text() == (workspace / "tok" / "tokenizer.json").read_text()
    assert read_metrics(tmp_path / "sft")[0]["loss"] < read_metrics(tmp_path / "pre")[0]["loss"] + 1


def test_full_disk_during_save_keeps_the_previous_checkpoint(workspace, tmp_path, monkeypatch):
    run(workspace, tmp_path / "r", steps=2)
    real_fsync = os.fsync

    def full(fd):  # the disk fills up while the checkpoint's files are written
        if ".step-" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(CheckpointError, match=r"step-4 checkpoint .* the disk is full; the previous checkpoint "
                                              r"step-000002 is intact"):
        run(workspace, tmp_path / "r", steps=4, resume=str(tmp_path / "r"))
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == [LINK, "metrics.jsonl", "step-000002"]
    assert resolve_checkpoint(tmp_path / "r").name == "step-000002"
    load_model(tmp_path / "r" / LINK)
    run(workspace, tmp_path / "r", steps=4, resume=str(tmp_path / "r"))  # and the run can go on
    assert [r["step"] for r in read_metrics(tmp_path / "r")] == [1, 2, 3, 4]


# --------------------------------------------------------------------------- user errors


def test_bad_data_is_a_clear_error(workspace, tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n")
    (tmp_path / "broken.jsonl").write_text('{"prompt": "1+1", "solution": "2"}\n{"prompt": \n')
    (tmp_path / "fields.jsonl").write_text('{"question": "1+1"}\n')
    (tmp_path / "binary.jsonl").write_bytes(b"\xff\xfe\x00")
    cases = {"missing.jsonl": (FileNotFoundError, "does not exist"), "empty.jsonl": (ValueError, "holds no rows"),
             "broken.jsonl": (ValueError, "broken.jsonl:2"), "fields.jsonl": (ValueError, "row 1.*needs"),
             "binary.jsonl": (ValueError, "not UTF-8")}
    for name, (error, message) in cases.items():
        with pytest.raises(error, match=message):
            run(workspace, tmp_path / "r", data=[str(tmp_path / name)])
    with pytest.raises(ValueError, match="one step needs 64"):
        run(workspace, tmp_path / "r", batch_size=64, per_level=1)


def test_resume_must_match_the_checkpoint(workspace, tmp_path):
    run(workspace, tmp_path / "r", steps=2)
    with pytest.raises(ConfigError, match="seq_len: checkpoint 32, now 48"):
        run(workspace, tmp_path / "r", steps=3, resume=str(tmp_path / "r"), seq_len=48)
    with pytest.raises(ConfigError, match="global batch"):
        run(workspace, tmp_path / "r", steps=3, resume=str(tmp_path / "r"), batch_size=2)
    other = micro_config(vocab_size=VOCAB, hidden_size=48)
    other.save(tmp_path)
    with pytest.raises(ConfigError, match="hidden_size: 48 vs 32"):
        run(workspace, tmp_path / "r", steps=3, resume=str(tmp_path / "r"), model_config=str(tmp_path))
    with pytest.raises(ValueError, match="already holds a run"):
        run(workspace, tmp_path / "r", steps=3)
    # kind is part of the data stream: SFT cannot resume a pretraining run (it should --init from it)
    with pytest.raises(ConfigError, match="kind: checkpoint 'pretrain', now 'sft'"):
        run(workspace, tmp_path / "r", steps=3, resume=str(tmp_path / "r"), kind="sft")
    assert resolve_checkpoint(tmp_path / "r").name == "step-000002"


def test_cli_train_resume_and_errors(workspace, tmp_path, capsys):
    common = ["--config", str(workspace / "config.json"), "--tokenizer", str(workspace / "tok"), "--tasks", "linear",
              "--difficulties", "1", "--per-level", "20", "--seq-len", "32", "--batch-size", "2", "--no-progress"]
    (tmp_path / "s.toml").write_text("warmup_steps = 1\nlr = 0.002\n")
    assert cli_main(["train", "pretrain", *common, "--steps", "2", "--out", str(tmp_path / "r"),
                     "--settings", str(tmp_path / "s.toml")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "r" / LINK)
    # --resume alone: settings come back from the checkpoint, --out defaults to the run directory
    assert cli_main(["train", "pretrain", "--resume", str(tmp_path / "r"), "--steps", "3", "--no-progress"]) == 0
    rows = read_metrics(tmp_path / "r")
    assert [r["step"] for r in rows] == [1, 2, 3] and rows[0]["lr"] == 0.002
    assert cli_main(["train", "pretrain", *common, "--steps", "2", "--out", str(tmp_path / "x"),
                     "--data", str(tmp_path / "nope.jsonl")]) == 2
    assert "data file" in capsys.readouterr().err
    assert cli_main(["train", "sft", *common, "--steps", "2"]) == 2
    assert "--out DIR is required" in capsys.readouterr().err


def test_plot_writes_the_pngs(workspace, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    run(workspace, tmp_path / "r", steps=3)
    assert cli_main(["plot", str(tmp_path / "r")]) == 0
    written = capsys.readouterr().out.split()
    names = {Path(p).name for p in written}
    assert names == {"loss.png", "lr.png", "throughput.png", "expert_load.png", "load_imbalance.png"}
    for path in written:
        assert Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and Path(path).stat().st_size > 5000
    shutil.rmtree(tmp_path / "r" / "plots")
    assert cli_main(["plot", str(tmp_path / "missing")]) == 2


def test_bf16_autocast_tracks_fp32(workspace, tmp_path):
    run(workspace, tmp_path / "fp32", steps=2)
    run(workspace, tmp_path / "bf16", steps=2, bf16=True)
    fp32, bf16 = losses(tmp_path / "fp32"), losses(tmp_path / "bf16")
    assert fp32 != bf16 and all(abs(a - b) < 0.05 for a, b in zip(fp32, bf16, strict=True))
    assert load_model(tmp_path / "bf16" / LINK).dtype == torch.float32  # master weights stay fp32
