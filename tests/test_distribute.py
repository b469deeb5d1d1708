"""``--strategy mirrored | multiworker``: training under ``tf.distribute``."""

import csv
import json
import os
import socket
import subprocess
import sys

import keras
import numpy as np
import pytest

from kvision import distribute
from kvision.train import train_classifier


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


# What a worker prints when its port was taken between _free_ports and its gRPC
# server's start (by another test, another xdist worker, any process).
_PORT_TAKEN = "Could not start gRPC server"


def _run_workers(argv, out, attempts=3):
    """Run ``kvision ARGV --out OUT --seed INDEX`` as each worker of a two-worker
    127.0.0.1 cluster until they all finish: ``[(returncode, stdout, stderr)]``.
    The ports are free when chosen but released before the workers bind them; a
    worker that finds its port taken fails at once while the other would wait for
    it, so both are stopped and the cluster started again on new ports, into an
    empty ``out``."""
    import shutil
    import time

    logs_dir = out.parent / f"{out.name}-logs"
    logs_dir.mkdir()
    for attempt in range(attempts):
        shutil.rmtree(out, ignore_errors=True)
        ports = _free_ports(2)
        workers, logs = [], []
        for index in range(2):
            env = dict(os.environ, TF_CONFIG=json.dumps({
                "cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                "task": {"type": "worker", "index": index}}))
            logs.append((open(logs_dir / f"out-{attempt}-{index}.txt", "w+"),
                         open(logs_dir / f"err-{attempt}-{index}.txt", "w+")))
            workers.append(subprocess.Popen([sys.executable, "-m", "kvision.cli", *argv,
                                             "--out", str(out), "--seed", str(index)],
                                            env=env,
                                            stdout=logs[-1][0], stderr=logs[-1][1],
                                            text=True))
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline and any(w.poll() is None for w in workers):
            if any(w.poll() not in (None, 0) for w in workers):
                break
            time.sleep(0.5)
        for worker in workers:  # the others, once one failed (or time ran out)
            if worker.poll() is None:
                worker.kill()
            worker.wait()
        results = []
        for worker, files in zip(workers, logs):
            for file in files:
                file.seek(0)
            results.append((worker.returncode, *(file.read() for file in files)))
            for file in files:
                file.close()
        if not any(code != 0 and _PORT_TAKEN in stderr for code, _, stderr in results):
            return results
    return results


def _losses(run_dir):
    with open(os.path.join(run_dir, "training_log.csv")) as f:
        return [float(row["loss"]) for row in csv.DictReader(f)]


@pytest.mark.slow
def test_two_workers_end_with_the_same_weights(tmp_path):
    """Two worker processes on 127.0.0.1 train LeNet-5 synchronously. Each is given
    its own seed, so without the gradient all-reduce they would start and end
    apart (different initial draws, shuffles and augmentations): the chief's initial
    values are broadcast and every update is the same, so they end identical while
    the loss each logs is the same global mean."""
    out = tmp_path / "run"
    results = _run_workers(["train", "lenet5", "--epochs", "2", "--steps-per-epoch", "6",
                            "--strategy", "multiworker", "--no-export"], out)
    for code, _, stderr in results:
        assert code == 0, stderr[-3000:]
    chief = keras.saving.load_model(out / "lenet5.keras")
    other = keras.saving.load_model(out / "worker-1" / "lenet5.keras")
    for a, b in zip(chief.get_weights(), other.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert _losses(out) == _losses(out / "worker-1")  # metrics are all-reduced too
    keras.utils.set_random_seed(0)
    from kvision.models import create

    initial = create("lenet5", input_shape=(32, 32, 1), classes=10)
    moved = [np.abs(a - b).max() for a, b in zip(chief.get_weights(), initial.get_weights())]
    assert max(moved) > 1e-3  # it trained


def test_mirrored_on_one_device_trains_as_without_a_strategy():
    """One full batch per step, so the order in which Keras' distributed iterator
    hands out the examples cannot matter: the same steps, the same weights."""
    runs = [train_classifier("lenet5", epochs=3, batch_size=1347, out_dir=False,
                             augment=False, strategy=strategy, verbose=0)
            for strategy in (None, "mirrored")]
    for a, b in zip(runs[0].model.get_weights(), runs[1].model.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert runs[1].model.distribute_strategy.num_replicas_in_sync >= 1


def test_multiworker_needs_a_cluster(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="TF_CONFIG"):
        distribute.get_strategy("multiworker")
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ValueError, match="not a valid cluster"):
        distribute.get_strategy("multiworker")
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["a:1"]},
                                                "task": {"type": "worker", "index": 3}}))
    with pytest.raises(ValueError, match="index 3"):
        distribute.get_strategy("multiworker")
