"""Data-parallel training under torchrun: 2 processes, the gloo backend, on this CPU, on chips of
the real Rotterdam sample. Sockets on 127.0.0.1 only (``--standalone``); every run is bounded
in time.

The ranks must hold identical weights after every step (generators through DDP, the
discriminators through their own gradient averaging), train on disjoint halves of the chips,
record the same history, save one model, and a rank that fails ends the job with its error.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from toolkit.ddp import Shard

WORKER = Path(__file__).parent / "ddp_worker.py"
TIMEOUT = 300


def torchrun(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", TOOLKIT_DDP_TIMEOUT="120")
    env.pop("WORLD_SIZE", None)
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT)


def ranks(out: Path) -> list[dict]:
    return [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


def check_identical_steps(records: list[dict], networks: set[str]) -> None:
    zero, one = records
    assert zero["world_size"] == one["world_size"] == 2
    assert len(zero["steps"]) == len(one["steps"]) > 0
    for step, (a, b) in enumerate(zip(zero["steps"], one["steps"])):
        assert set(a["params"]) == networks
        assert a["params"] == b["params"], f"step {step}: the ranks' weights differ"
        assert a["batch"] != b["batch"], f"step {step}: both ranks trained on the same chips"
    # weights change from step to step (the digests are not of something constant)
    assert zero["steps"][0]["params"] != zero["steps"][-1]["params"]
    # each epoch the two shards together hold every training chip, and only the padding twice
    n = zero["n_train"]
    for shard_0, shard_1 in zip(zero["shards"], one["shards"]):
        assert len(shard_0) == len(shard_1) == -(-n // 2)
        assert set(shard_0) | set(shard_1) == set(range(n))
    assert zero["shards"][0] != zero["shards"][1]  # reshuffled each epoch
    assert zero["history"] == one["history"] and len(zero["history"]) == 2
    assert zero["emd"] == one["emd"]


def test_pix2pix_ranks_train_in_step_and_save_one_model(rotterdam_pairs, tmp_path):
    out = tmp_path / "run"
    run = torchrun(str(WORKER), "pix2pix", str(rotterdam_pairs), str(out), "--lr-find", cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    records = ranks(out)
    check_identical_steps(records, {"generator", "discriminator"})
    zero, one = records
    # lr_find (rank 0's search) before and after the fit: one suggestion everywhere, weights kept
    assert len(zero["lr_suggestions"]) == 2 and zero["lr_suggestions"] == one["lr_suggestions"]
    assert zero["final"] == one["final"] == zero["steps"][-1]["params"]
    assert "torchrun started this script as one of 2 processes" in zero["refused"]
    assert "Data-parallel training on 2 processes (gloo)" in run.stdout + run.stderr
    # one model, written by rank 0; checkpoints only from rank 0's fit
    saved = sorted(p.name for p in (out / "model").iterdir())
    assert {"model.dlpk", "model.emd", "model.pth"} <= set(saved) and len([s for s in saved if s.endswith(".emd")]) == 1
    emd = json.loads((out / "model" / "model.emd").read_text())
    assert len(emd["Toolkit"]["history"]) == 2
    checkpoints = sorted(p.name.split("_", 1)[1] for p in (out / "work" / "checkpoints").glob("*.pth"))
    assert checkpoints == ["best.pth", "epoch0.pth", "epoch1.pth", "last.pth"]  # one fit's, rank 0's


def test_cyclegan_discriminators_are_averaged_too(rotterdam_unpaired, tmp_path):
    out = tmp_path / "run"
    run = torchrun(str(WORKER), "cyclegan", str(rotterdam_unpaired), str(out), cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    check_identical_steps(ranks(out), {"generator_ab", "generator_ba", "discriminator_a", "discriminator_b"})


def test_a_failing_rank_ends_the_job_with_its_error_and_the_fit_resumes(rotterdam_pairs, tmp_path):
    out = tmp_path / "run"
    start = time.monotonic()
    # 14 training chips: 7 a rank, 4 steps an epoch at 2 chips; step 5 is in the second epoch
    run = torchrun(str(WORKER), "pix2pix", str(rotterdam_pairs), str(out), "--crash-at", "5", cwd=tmp_path)
    assert run.returncode != 0
    assert "injected failure on rank 1 at step 5" in run.stderr
    assert time.monotonic() - start < TIMEOUT / 2  # ended, not hung until the collective timeout
    assert not (out / "model").exists()
    # the first epoch's checkpoint (rank 0's) brings both ranks back, in step
    resumed = torchrun(str(WORKER), "pix2pix", str(rotterdam_pairs), str(out), "--resume", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    zero, one = ranks(out)
    assert len(zero["steps"]) == len(one["steps"]) == 4  # the second epoch only
    assert [s["params"] for s in zero["steps"]] == [s["params"] for s in one["steps"]]
    assert [r["epoch"] for r in zero["history"]] == [0, 1] and zero["history"] == one["history"]
    assert (out / "model" / "model.emd").is_file()


def test_torchrun_toolkit_train(rotterdam_pairs, tmp_path):
    model = tmp_path / "models" / "ms2pan"
    run = torchrun("-m", "toolkit", "train", str(rotterdam_pairs), "--out", str(model), "--epochs", "1",
                   "--ngf", "8", "--ndf", "8", "--batch-size", "2", cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = [line for line in run.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1  # rank 0 alone reports
    result = json.loads(lines[0])
    assert result["processes"] == 2 and result["epochs_trained"] == 1
    assert Path(result["dlpk"]).is_file()


@pytest.mark.parametrize("n, world", [(14, 2), (15, 2), (7, 3), (1, 2)])
def test_shards_cover_every_chip_with_equal_counts(n, world):
    shards = [Shard(n, r, world, seed=5) for r in range(world)]
    for epoch in (0, 1):
        for s in shards:
            s.epoch = epoch
        drawn = [s.indices() for s in shards]
        assert {len(d) for d in drawn} == {-(-n // world)}
        assert set(np.concatenate(drawn).tolist()) == set(range(n))
    assert Shard(n, 0, world, 5).indices() == Shard(n, 0, world, 5).indices()
