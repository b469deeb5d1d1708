"""A killed ``kvision train`` resumes from its last finished epoch (BackupAndRestore)."""

import csv
import os
import signal
import subprocess
import sys
import time

import pytest


def _epochs(log):
    if not log.exists():
        return []
    with open(log) as f:
        return [int(row["epoch"]) for row in csv.DictReader(f)]


@pytest.mark.slow
def test_killed_run_resumes_where_it_stopped(tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "kvision.cli", "train", "lenet5", "--epochs", "6",
               "--out", str(out), "--no-export"]
    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = out / "training_log.csv"
    deadline = time.monotonic() + 240
    while len(_epochs(log)) < 2 and time.monotonic() < deadline and first.poll() is None:
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)  # no chance to clean up, as with `kill -9`
    first.wait()
    done = len(_epochs(log))
    assert 2 <= done < 6, f"the first run logged {done} epochs before the kill"
    assert (out / "backup").is_dir() and not (out / "lenet5.keras").exists()

    second = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    resumed = int(second.stdout.split("resumed from epoch")[1].split()[0])
    # The backup of an epoch is written before its log row, so a kill between the two
    # can leave the backup one epoch ahead of the log, never behind it.
    assert resumed in (done, done + 1)
    epochs = _epochs(log)
    assert epochs == list(range(done)) + list(range(resumed, 6))
    assert (out / "lenet5.keras").is_file() and not (out / "backup").exists()
    accuracy = float(second.stdout.split("test top-1 accuracy:")[1].split()[0])
    assert accuracy > 0.85  # six epochs in all, not two
