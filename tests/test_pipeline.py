"""`r1lab run` end to end on the micro setting: every stage runs and the report has the documented shape."""

import json

import pytest

from r1lab.cli import main


def test_pipeline_micro_end_to_end(tmp_path, capsys):
    assert main(["run", "--micro", "--name", "ci", "--runs", str(tmp_path), "--ship", str(tmp_path / "ship"),
                 "--sft-steps", "3", "--grpo-steps", "1", "--grpo-beta", "0.04"]) == 0
    root = tmp_path / "ci"
    assert [json.loads(line)["step"] for line in (root / "sft" / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    report = json.loads((root / "report.json").read_text())
    for model in ("sft", "rl", "distill", "rs", "zero", "rl_mix"):
        assert {"pass@1", "pass@2"} <= set(report[model])
        assert 0 <= report[model]["pass@1"] <= report[model]["pass@2"] <= 1
    mix = ["countdown:2", "linear:2", "linear:3"]
    assert 0 <= report["format_rate"] <= 1 and report["bench"] == "mix of " + ", ".join(mix)
    # the contract of report.json: per-level figures for sft and rl, the harder level among them
    assert list(report["eval"]) == [*mix, "countdown:3"] and report["harder"] == "countdown:3"
    for figures in report["eval"].values():
        assert {"n", "pass@1", "pass@2"} <= set(figures["sft"]) and {"n", "pass@1", "pass@2"} <= set(figures["rl"])
    assert report["sft"]["pass@1"] == pytest.approx(sum(report["eval"][m]["sft"]["pass@1"] for m in mix) / 3)
    assert set(report["space"]) == set(mix)
    for level in mix:
        seen, space = report["space"][level]["train_problems_seen"], report["space"][level]["space_estimate"]
        assert 0 < seen < space
        assert 0 < report["space"][level]["pretrain_problems_seen"] <= 4  # pretrain_per_level in the micro setting
    curve_keys = {"step", "reward", "response_length", "self_check_rate", "frac_zero_std"}
    assert len(report["grpo_curve"]) == 1 and curve_keys <= set(report["grpo_curve"][0])
    assert len(report["zero_curve"]) == 2 and curve_keys <= set(report["zero_curve"][0])
    assert set(report["controls"]) == {"sft_same_compute", "sft_low_temperature"}
    assert all("pass@1" in c for c in report["controls"].values())
    # --grpo-beta reaches the GRPO trainer (which then keeps a reference model) and the report's config
    assert json.loads((root / "grpo" / "final" / "grpo_config.json").read_text())["beta"] == 0.04
    assert report["config"]["grpo_beta"] == 0.04
    text = (root / "report.md").read_text()
    assert "cold start 3 SFT steps on search traces" in text and "GRPO 1 steps" in text and "KL weight 0.04" in text
    assert "countdown:3 (untrained)" in text and "R1-Zero" in text
    for plot in ("grpo.png", "expert_load.png", "accuracy.png"):
        assert (root / plot).stat().st_size > 1000
    rows = [json.loads(line) for line in (root / "grpo" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1
    assert {"reward", "accuracy", "format_rate", "response_length", "self_check_rate", "frac_zero_std", "kl",
            "clip_fraction", "entropy"} <= set(rows[0])
    assert sum(rows[0][f"mix/{level}"] for level in mix if f"mix/{level}" in rows[0]) >= 4  # prompts by level
    for name in ("tiny-r1-sft", "tiny-r1", "tiny-r1-distill", "tiny-r1-base"):  # the base: pretrained in this run
        shipped = tmp_path / "ship" / name
        assert (shipped / "model.safetensors").exists() and (shipped / "tokenizer.json").exists()
        assert not (shipped / "training_state").exists()
    assert json.loads((tmp_path / "ship" / "report.json").read_text())["bench"] == report["bench"]
    assert all((tmp_path / "ship" / plot).exists() for plot in report["plots"])  # report.md links them
    # A second run skips every finished stage.
    assert main(["run", "--micro", "--name", "ci", "--runs", str(tmp_path)]) == 0
    assert "done earlier, skipping" in capsys.readouterr().err
    # A run from a given base copies its tokenizer and weights instead of training them, then goes on.
    assert main(["run", "--micro", "--name", "from-base", "--runs", str(tmp_path), "--base", str(tmp_path / "ship" /
                 "tiny-r1-base"), "--stages", "tokenizer", "pretrain", "sft", "--sft-steps", "1"]) == 0
    copied = tmp_path / "from-base"
    for file in ("model.safetensors", "config.json", "tokenizer.json"):
        assert (copied / "pretrain" / file).read_bytes() == (tmp_path / "ship" / "tiny-r1-base" / file).read_bytes()
    assert (copied / "tokenizer" / "tokenizer.json").exists() and not (copied / "tokenizer" / "config.json").exists()
    assert not (copied / "pretrain-data.jsonl").exists() and (copied / ".sft.done").exists()
    assert main(["run", "--micro", "--name", "no-base", "--runs", str(tmp_path), "--base", str(tmp_path / "nowhere"),
                 "--stages", "tokenizer"]) != 0
    err = capsys.readouterr().err
    assert "base model: no checkpoint at" in err and "--base none" in err


@pytest.mark.parametrize("bad", ["0", "-3", "many"])
def test_run_rejects_a_step_count_below_one(bad, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["run", "--micro", "--sft-steps", bad])
    assert exit_.value.code == 2 and "expected a whole number of steps >= 1" in capsys.readouterr().err


@pytest.mark.parametrize("bad", ["-0.1", "nan", "inf", "strong"])
def test_run_rejects_a_bad_kl_weight(bad, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["run", "--micro", "--grpo-beta", bad])
    assert exit_.value.code == 2 and "expected a KL weight >= 0" in capsys.readouterr().err


def test_run_refuses_traces_longer_than_the_context_and_bad_levels(tmp_path, capsys):
    from r1lab.pipeline import Pipeline, PipelineConfig
    from r1lab.tasks import TaskError

    cfg = PipelineConfig.micro(name="short", runs=str(tmp_path), sft_seq_len=48, stages=["tokenizer", "sft"])
    with pytest.raises(ValueError, match=r"trace takes \d+ tokens with its prompt, more than the cold start's "
                                         r"context sft_seq_len=48"):
        Pipeline(cfg).run()
    assert not (tmp_path / "short" / "sft-data.jsonl").exists()  # nothing half-written
    with pytest.raises(TaskError, match="unknown difficulty 9 for task 'linear'; choose one of: 1, 2, 3, 4, 5"):
        PipelineConfig(mix=["countdown:2", "linear:9"])
    with pytest.raises(TaskError, match="harder='countdown:2' is in the training mix"):
        PipelineConfig(harder="countdown:2")  # in the default mix
    with pytest.raises(TaskError, match="harder='countdown:1' is in the pretraining corpus"):
        PipelineConfig(harder="countdown:1")  # read by the base
    with pytest.raises(TaskError, match="no search traces for arithmetic:2"):
        PipelineConfig(mix=["arithmetic:2"], traces="search")
    assert main(["run", "--micro", "--mix", "sudoku:1", "--runs", str(tmp_path)]) != 0
    assert "unknown task 'sudoku'; choose one of: arithmetic" in capsys.readouterr().err
