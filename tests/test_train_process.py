"""The trainer across processes: a kill -9 in the middle of a checkpoint write, and torchrun with two gloo ranks.

Both start real Python processes (about 5 s for the kill, 10-15 s for torchrun on 2 cores) with one OpenMP thread
each, so they do not fight over the cores.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from test_train import losses, one_thread, run, settings, workspace  # noqa: F401  (fixtures)

from r1lab import load_model
from r1lab.train.metrics import read_metrics
from r1lab.train.state import LINK, resolve_checkpoint

ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")

# Runs the trainer with the state writer patched to stop half-way through the step-4 optimizer file.
_KILLED_CHILD = """
import json, sys, time
from pathlib import Path
import r1lab.train.state as state
real = state._write_synced
def stall(path, data):
    if ".step-000004" in str(path) and path.name == "optimizer.safetensors":
        real(path, data[: len(data) // 2])
        Path(sys.argv[2]).write_text("mid-write")
        time.sleep(120)
    real(path, data)
state._write_synced = stall
from r1lab.train import TrainConfig, train
train(TrainConfig(**json.loads(sys.argv[1])))
"""


def test_kill_during_checkpoint_write_leaves_the_previous_one(workspace, tmp_path):  # noqa: F811
    out, marker = tmp_path / "r", tmp_path / "marker"
    cfg = settings(workspace, out, steps=4, save_every=2)
    child = subprocess.Popen([sys.executable, "-c", _KILLED_CHILD, json.dumps(cfg), str(marker)], env=ENV,
                             stderr=subprocess.PIPE)
    deadline = time.time() + 90
    while not marker.exists():
        assert child.poll() is None, child.stderr.read().decode()
        assert time.time() < deadline, "the child never reached the checkpoint write"
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL
    leftovers = [p.name for p in out.iterdir() if p.name.startswith(".step-000004.tmp-")]
    assert leftovers, "the kill should have hit the step-4 write"
    assert resolve_checkpoint(out).name == "step-000002"
    load_model(out / LINK)  # still a complete HF checkpoint
    run(workspace, out, steps=4, resume=str(out))  # resume from step 2 and finish
    assert resolve_checkpoint(out).name == "step-000004"
    assert sorted(p.name for p in out.iterdir()) == [LINK, "metrics.jsonl", "step-000004"]
    assert [r["step"] for r in read_metrics(out)] == [1, 2, 3, 4]
    run(workspace, tmp_path / "straight", steps=4)
    assert losses(out) == pytest.approx(losses(tmp_path / "straight"), abs=1e-6)


def test_two_ranks_follow_one_rank_with_twice_the_batch(workspace, tmp_path):  # noqa: F811
    """SFT (uneven loss tokens per rank), 2 gloo ranks x batch 2 vs 1 process x batch 4.

    Tolerance: 1e-5 per step on the loss (measured ~5e-7: only float summation order differs), identical expert
    loads, weights within 1e-5.
    """
    steps = ["--steps", "4", "--seq-len", "64", "--warmup-steps", "2", "--no-progress"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "r1lab",
           "train", "sft", "--config", str(workspace / "config.json"), "--tokenizer", str(workspace / "tok"),
           "--tasks", "arithmetic", "linear", "--difficulties", "1", "2", "--per-level", "8", "--batch-size", "2",
           "--out", str(tmp_path / "ddp"), *steps]
    # Own process group, so that on a timeout the ranks die with their launcher instead of lingering.
    launcher = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
    try:
        stdout, stderr = launcher.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(launcher.pid, signal.SIGKILL)
        stdout, stderr = launcher.communicate()
        raise AssertionError(f"two-rank run timed out; stderr:\n{stderr[-3000:]}") from None
    done = subprocess.CompletedProcess(cmd, launcher.returncode, stdout, stderr)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == str(tmp_path / "ddp" / LINK)  # printed once, by rank 0
    run(workspace, tmp_path / "single", kind="sft", seq_len=64, batch_size=4, steps=4)
    ddp, single = read_metrics(tmp_path / "ddp"), read_metrics(tmp_path / "single")
    assert len(ddp) == len(single) == 4
    for a, b in zip(ddp, single, strict=True):
        assert abs(a["loss"] - b["loss"]) < 1e-5 and a["loss_tokens"] == b["loss_tokens"]
        assert a["expert_load"] == b["expert_load"]
    state = json.loads((tmp_path / "ddp" / LINK / "training_state" / "state.json").read_text())
    assert state["world_size"] == 2
    x, y = load_model(tmp_path / "ddp" / LINK), load_model(tmp_path / "single" / LINK)
    for (name, p), (_, q) in zip(x.state_dict().items(), y.state_dict().items(), strict=True):
        assert torch.allclose(p, q, atol=1e-5), name
