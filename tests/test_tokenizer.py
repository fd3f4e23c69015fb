"""The tokenizer: trained on the task corpus, loaded by transformers, exact round trips, DeepSeek-R1's chat format."""

import json
import re

import pytest

from conftest import run_data_command
from r1lab.config import preset
from r1lab.tasks import generate, solution
from r1lab.tokenizer import (
    ASSISTANT,
    BOS,
    CHAT_TEMPLATE,
    END_THINK,
    EOS,
    PAD,
    SPECIAL_TOKENS,
    THINK,
    USER,
    build_tokenizer,
    default_corpus,
    format_chat,
    load_tokenizer,
    save_tokenizer,
    train_tokenizer,
)

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def corpus():
    return default_corpus(per_level=60, seed=0)


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory, corpus):
    return train_tokenizer(corpus, tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def tok(tok_dir):
    return load_tokenizer(tok_dir)


def test_saved_files_load_with_auto_tokenizer(tok_dir, tok):
    assert sorted(p.name for p in tok_dir.iterdir()) == ["tokenizer.json", "tokenizer_config.json"]
    auto = transformers.AutoTokenizer.from_pretrained(str(tok_dir))
    text = "What is 12 + 7?"
    assert auto.encode(text) == tok.encode(text)
    assert json.loads((tok_dir / "tokenizer_config.json").read_text())["chat_template"] == CHAT_TEMPLATE


def test_vocabulary_fits_the_tiny_model(tok):
    assert len(tok) <= preset("tiny").vocab_size <= 1024
    assert [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))
    assert (tok.bos_token, tok.bos_token_id, tok.eos_token, tok.eos_token_id) == (BOS, 0, EOS, 1)
    assert (tok.bos_token_id, tok.eos_token_id) == (preset("tiny").bos_token_id, preset("tiny").eos_token_id)
    assert tok.pad_token == PAD


def test_digits_are_single_tokens(tok):
    assert all(len(re.findall(r"\d", piece)) <= 1 for piece in tok.get_vocab())
    ids = tok.encode("1234567890 + 9876", add_special_tokens=False)
    digits = [p for p in tok.convert_ids_to_tokens(ids) if re.search(r"\d", p)]
    assert digits == list("1234567890") + list("9876")


def test_task_words_are_merged(tok):
    # the corpus teaches BPE the recurring words, so traces stay short
    assert len(tok.encode(" write", add_special_tokens=False)) == 1
    assert len(tok.encode("Answer:", add_special_tokens=False)) <= 2
    assert len(tok.encode(solution(generate("countdown", 0, 3)))) < 60


ROUND_TRIP = [
    "What is 347 * 26?",
    "-12 + (3 - 4) / 5 = 7x\n\n  indented\ttab",
    "<think>\n7 + 5 = 12, write 2 carry 1\n</think>\nAnswer: 125",
    f"{BOS}system{USER}hi{ASSISTANT}<think>\nx\n</think>\nok{EOS}",
    "Edges: A-B 4, A-C 1. Shortest distance from A to B?",
    "unicode: ünïcødé − × ÷ 日本語 🙂, and  double  spaces, trailing space ",
    "",
]


@pytest.mark.parametrize("text", ROUND_TRIP)
def test_round_trip(tok, text):
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text
    assert tok.unk_token_id is None or tok.unk_token_id not in ids


def test_special_tokens_are_single_ids(tok):
    for token in SPECIAL_TOKENS:
        assert tok.encode(f"a{token}1", add_special_tokens=False)[1:2] == [tok.convert_tokens_to_ids(token)]
    assert tok.encode("hello", add_special_tokens=True)[0] != tok.bos_token_id  # BOS comes from the template


def test_skip_special_tokens_keeps_reasoning_markers(tok):
    ids = tok.encode(f"{USER}2+2?{ASSISTANT}{THINK}\n2+2=4\n{END_THINK}\nAnswer: 4{EOS}{PAD}")
    assert tok.decode(ids, skip_special_tokens=True) == "2+2?<think>\n2+2=4\n</think>\nAnswer: 4"


CONVERSATIONS = [
    [{"role": "user", "content": "What is 3 + 4?"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "What is 3 + 4?"}],
    [{"role": "user", "content": "What is 3 + 4?"},
     {"role": "assistant", "content": "<think>\n3 + 4 = 7\n</think>\nAnswer: 7"},
     {"role": "user", "content": "And 5 + 5?"}],
    [{"role": "system", "content": "A"}, {"role": "user", "content": "q1"},
     {"role": "assistant", "content": "no reasoning here"}, {"role": "system", "content": "B"},
     {"role": "user", "content": "q2"}, {"role": "assistant", "content": "r</think>a</think>final"}],
]


@pytest.mark.parametrize("messages", CONVERSATIONS)
@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_chat_template_matches_reference(tok, messages, add_generation_prompt):
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    assert text == format_chat(messages, add_generation_prompt)


def test_chat_format_is_deepseek_r1(tok):
    prompt = tok.apply_chat_template(CONVERSATIONS[2], tokenize=False, add_generation_prompt=True)
    assert prompt == (f"{BOS}{USER}What is 3 + 4?{ASSISTANT}\nAnswer: 7{EOS}{USER}And 5 + 5?{ASSISTANT}<think>\n")
    ids = tok.apply_chat_template(CONVERSATIONS[2], tokenize=True, add_generation_prompt=True)
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    assert tok.convert_ids_to_tokens(ids[-3:]) == [ASSISTANT, THINK, "Ċ"]
    system = tok.apply_chat_template(CONVERSATIONS[3], tokenize=False)
    assert system.startswith(f"{BOS}A\n\nB{USER}q1") and system.endswith(f"{ASSISTANT}final{EOS}")


def test_chat_template_rejects_unknown_roles(tok):
    messages = [{"role": "tool", "content": "x"}]
    with pytest.raises(ValueError, match="unsupported role"):
        format_chat(messages)
    with pytest.raises(Exception, match="unsupported role"):
        tok.apply_chat_template(messages, tokenize=False)


def test_training_is_deterministic_and_checked(corpus, tok_dir, tmp_path):
    again = save_tokenizer(build_tokenizer(corpus), tmp_path / "again")
    assert (again / "tokenizer.json").read_text() == (tok_dir / "tokenizer.json").read_text()
    with pytest.raises(ValueError, match="at least 263"):
        build_tokenizer(corpus, vocab_size=100)
    with pytest.raises(ValueError, match="empty"):
        build_tokenizer(["", "  "])
    with pytest.raises(FileNotFoundError, match="tokenizer train"):
        load_tokenizer(tmp_path / "missing")


def test_vocab_size_bounds_the_vocabulary(corpus):
    assert build_tokenizer(corpus, vocab_size=300).get_vocab_size() == 300


def test_cli_train_and_encode(tmp_path, capsys):
    out = tmp_path / "tok"
    assert run_data_command("tokenizer", "train", "--out", str(out), "--per-level", "20", "--vocab-size", "512") == 0
    assert "saved to" in capsys.readouterr().out
    assert len(load_tokenizer(out)) <= 512
    assert run_data_command("tokenizer", "encode", "--tokenizer", str(out), "<think>\\n12") == 0
    printed = capsys.readouterr().out
    assert [line.split()[-1] for line in printed.splitlines()] == ["'<think>'", "'\\n'", "'1'", "'2'", "tokens"]
    assert printed.endswith("4 tokens\n")


def test_cli_train_on_a_data_file(tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    assert run_data_command("data", "make", "--task", "linear", "--difficulty", "3", "--split", "train", "--n", "50",
                "--out", str(data)) == 0
    assert run_data_command("tokenizer", "train", "--out", str(tmp_path / "tok"), "--corpus", str(data)) == 0
    assert "trained on 100 texts" in capsys.readouterr().out
