"""Training checkpoints: an HF-format model directory plus the state that makes a resumed run exact.

A run directory looks like

    DIR/metrics.jsonl          one JSON object per optimiser step
    DIR/step-000200/           config.json, model.safetensors, tokenizer files: an HF checkpoint that
                               `load_model` and transformers read as it is
    DIR/step-000200/training_state/   optimizer.safetensors, state.json: what `--resume` needs besides
    DIR/checkpoint -> step-000200

Security: only safetensors and JSON are read back, never pickles. So the optimiser state is flattened into one
safetensors file keyed `<parameter name>/<state key>` (names, not positions, so a reordered model is caught),
the torch RNG states sit in the same file, and everything else (step, data position, schedule, settings, Python
RNG state) is `state.json`. They live in a subdirectory because weight loaders read every top-level
`*.safetensors` file of a checkpoint as weights.

Atomicity: a checkpoint is written into `DIR/.step-NNNNNN.tmp-PID/`, every file fsynced, the directory renamed to
`step-NNNNNN`, and only then is the `checkpoint` symlink replaced, itself by renaming a fresh link over it (a
rename is atomic on POSIX). At every instant `DIR/checkpoint` names a complete checkpoint: a kill -9 or a full
disk mid-write leaves the previous one in place and a temporary directory that the next save or resume removes.
Older step directories are deleted after the link moves (`keep_checkpoints` newest are kept).
"""

from __future__ import annotations

import errno
import json
import os
import random
import re
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes

from ..checkpoint import CheckpointError, save_pretrained

STATE_DIR = "training_state"
STATE_FILE = f"{STATE_DIR}/state.json"
OPTIMIZER_FILE = f"{STATE_DIR}/optimizer.safetensors"
LINK = "checkpoint"
FORMAT_VERSION = 1
_STEP_DIR = re.compile(r"^step-(\d+)$")
_TMP_DIR = re.compile(r"^\.step-\d+\.tmp-\d+$|^\.checkpoint\.tmp-\d+$")


# --------------------------------------------------------------------------- locating


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory from either itself or the run directory that holds it (via its `checkpoint` link)."""
    path = Path(path)
    if (path / "config.json").is_file():
        return path
    if (path / LINK).exists():
        return (path / LINK).resolve()
    if path.is_dir():
        raise CheckpointError(f"{path} holds neither a checkpoint (config.json) nor a run's `{LINK}` link")
    raise CheckpointError(f"no checkpoint at {path}")


def run_dir_of(checkpoint: Path) -> Path:
    """The run directory a checkpoint belongs to (its parent when it is a step directory)."""
    checkpoint = checkpoint.resolve()
    return checkpoint.parent if _STEP_DIR.match(checkpoint.name) else checkpoint


def read_state(checkpoint: Path) -> dict[str, Any]:
    path = Path(checkpoint) / STATE_FILE
    if not path.is_file():
        raise CheckpointError(f"{checkpoint} has no {STATE_FILE}: it holds weights only; start from it with "
                              "--init instead of --resume")
    try:
        state = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read {path}: {e}") from None
    if state.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: training-state format {state.get('format')!r} is not {FORMAT_VERSION}")
    return state


# --------------------------------------------------------------------------- optimiser and RNG as tensors


def optimizer_tensors(optimizer: torch.optim.Optimizer, names: list[str]) -> tuple[dict[str, torch.Tensor], dict]:
    """Flatten an optimiser's state into {"<param name>/<key>": tensor} plus a JSON-able remainder."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, entries in sd["state"].items():
        for key, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"{names[index]}/{key}"] = value.detach().to("cpu").contiguous()
            else:
                scalars[f"{names[index]}/{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "param_names": names, "scalars": scalars}


def load_optimizer(optimizer: torch.optim.Optimizer, names: list[str], tensors: dict[str, torch.Tensor],
                   meta: dict) -> None:
    if meta["param_names"] != names:
        missing = sorted(set(meta["param_names"]) - set(names))[:5]
        extra = sorted(set(names) - set(meta["param_names"]))[:5]
        raise CheckpointError("the optimiser state was saved for different parameters "
                              f"(only in checkpoint: {missing or '-'}; only in model: {extra or '-'})")
    state: dict[int, dict[str, Any]] = {}
    index = {name: i for i, name in enumerate(names)}
    for key, value in list(tensors.items()) + list(meta["scalars"].items()):
        name, entry = key.rsplit("/", 1)
        state.setdefault(index[name], {})[entry] = value
    groups = [dict(g, betas=tuple(g["betas"])) if "betas" in g else dict(g) for g in meta["param_groups"]]
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {"rng/torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors |= {f"rng/cuda/{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())}
    version, internal, gauss = random.getstate()
    return tensors, {"python": [version, list(internal), gauss]}


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict) -> None:
    torch.set_rng_state(tensors["rng/torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng/cuda/"))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))


def read_tensors(checkpoint: Path) -> dict[str, torch.Tensor]:
    path = Path(checkpoint) / OPTIMIZER_FILE
    if not path.is_file():
        raise CheckpointError(f"{checkpoint} has no {OPTIMIZER_FILE}")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise CheckpointError(f"cannot read {path}: {e}") from None


# --------------------------------------------------------------------------- writing


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(run_dir: str | Path, step: int, model, optimizer: torch.optim.Optimizer,
                    param_names: list[str], state: dict[str, Any], tokenizer=None, keep: int = 1) -> Path:
    """Write a complete checkpoint for `step` and point `run_dir/checkpoint` at it; returns the step directory.

    On any OSError (a full disk, a vanished directory) the partial files are removed, the previous checkpoint is
    untouched, and a CheckpointError says so.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    remove_partial(run_dir)
    name = f"step-{step:06d}"
    final, link = run_dir / name, run_dir / LINK
    if link.is_symlink() and link.resolve() == final.resolve():
        raise CheckpointError(f"{final} is the current checkpoint; refusing to overwrite it in place")
    tmp = run_dir / f".{name}.tmp-{os.getpid()}"
    try:
        tmp.mkdir()
        save_pretrained(model, tmp)
        if tokenizer is not None:
            from ..tokenizer import save_tokenizer

            save_tokenizer(tokenizer, tmp)
        (tmp / STATE_DIR).mkdir()
        opt_tensors, opt_meta = optimizer_tensors(optimizer, param_names)
        rng_tensors, rng_meta = rng_state()
        _write_synced(tmp / OPTIMIZER_FILE, safetensors_bytes(opt_tensors | rng_tensors, metadata={"format": "pt"}))
        full_state = dict(state, format=FORMAT_VERSION, step=step, optimizer=opt_meta, rng=rng_meta,
                          saved_at=time.strftime("%Y-%m-%dT%H:%M:%S"))
        _write_synced(tmp / STATE_FILE, (json.dumps(full_state, indent=1) + "\n").encode())
        _fsync_dir(tmp / STATE_DIR)
        _fsync_dir(tmp)
        if final.exists():  # left by a crash after the rename but before the link moved; never the current one
            shutil.rmtree(final)
        os.rename(tmp, final)
        new_link = run_dir / f".{LINK}.tmp-{os.getpid()}"
        new_link.unlink(missing_ok=True)
        os.symlink(name, new_link)
        os.replace(new_link, link)
        _fsync_dir(run_dir)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        previous = f"the previous checkpoint {link.resolve().name} is intact" if link.exists() else \
            "no earlier checkpoint exists"
        reason = "the disk is full" if e.errno == errno.ENOSPC else (e.strerror or str(e))
        raise CheckpointError(f"could not save the step-{step} checkpoint in {run_dir}: {reason}; {previous}") \
            from None
    _prune(run_dir, keep)
    return final


def remove_partial(run_dir: Path) -> None:
    """Delete temporary directories and links left by an interrupted save."""
    if not run_dir.is_dir():
        return
    for entry in run_dir.iterdir():
        if _TMP_DIR.match(entry.name):
            if entry.is_symlink() or entry.is_file():
                entry.unlink(missing_ok=True)
            else:
                shutil.rmtree(entry, ignore_errors=True)


def _prune(run_dir: Path, keep: int) -> None:
    current = (run_dir / LINK).resolve().name
    steps = sorted((int(m.group(1)), p) for p in run_dir.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir())
    kept = {p.name for _, p in steps[-keep:]} | {current}
    for _, path in steps:
        if path.name not in kept:
            shutil.rmtree(path, ignore_errors=True)
