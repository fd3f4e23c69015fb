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
    for model in ("sft", "rl", "distill"):
        assert {"pass@1", "pass@2"} <= set(report[model])
        assert 0 <= report[model]["pass@1"] <= report[model]["pass@2"] <= 1
    assert 0 <= report["format_rate"] <= 1 and report["bench"] == "countdown:2"
    # --grpo-beta reaches the GRPO trainer (which then keeps a reference model) and the report's config
    assert json.loads((root / "grpo" / "final" / "grpo_config.json").read_text())["beta"] == 0.04
    assert report["config"]["grpo_beta"] == 0.04
    assert "cold-start SFT 3 steps, GRPO 1 steps (KL weight 0.04)" in (root / "report.md").read_text()
    for plot in ("grpo.png", "expert_load.png", "accuracy.png"):
        assert (root / plot).stat().st_size > 1000
    rows = [json.loads(line) for line in (root / "grpo" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1
    assert {"reward", "accuracy", "format_rate", "completion_len", "frac_zero_std", "kl", "clip_fraction",
            "entropy"} <= set(rows[0])
    for name in ("tiny-r1-sft", "tiny-r1", "tiny-r1-distill"):
        shipped = tmp_path / "ship" / name
        assert (shipped / "model.safetensors").exists() and (shipped / "tokenizer.json").exists()
        assert not (shipped / "training_state").exists()
    assert json.loads((tmp_path / "ship" / "report.json").read_text())["bench"] == "countdown:2"
    assert all((tmp_path / "ship" / plot).exists() for plot in report["plots"])  # report.md links them
    # A second run skips every finished stage.
    assert main(["run", "--micro", "--name", "ci", "--runs", str(tmp_path)]) == 0
    assert "done earlier, skipping" in capsys.readouterr().err


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
