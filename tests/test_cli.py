import json
import subprocess
import sys

import pytest

from kvision import cli
from kvision.models import create, profile


def run(*args, env=None):
    return subprocess.run([sys.executable, "-m", "kvision.cli", *args], capture_output=True,
                          text=True, env=env, timeout=300)


def test_zoo_table_profiles_and_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    rows = cli.zoo_table(["lenet5", "squeezenet1_1"], progress=False)
    expected = profile(create("squeezenet1_1"))
    row = rows[1]
    assert row["name"] == "squeezenet1_1" and row["counted"] == expected.trainable_params
    assert row["gflops"] == pytest.approx(expected.gflops)
    cache = json.loads(open(cli._profile_cache_path()).read())
    assert set(cache) == {"lenet5", "squeezenet1_1"}
    table = cli.format_table(rows)
    assert "squeezenet1_1" in table and f"{expected.total_params:,}" in table


def test_info_prints_the_network(tmp_path):
    done = run("info", "lenet5")
    assert done.returncode == 0, done.stderr
    assert "61,706" in done.stdout and "LeCun" not in done.stdout
    assert "c3_conv" in done.stdout and "Gradient-Based Learning" in done.stdout


def test_unknown_model_is_a_clean_error():
    done = run("info", "resnet05")
    assert done.returncode == 2
    assert "Unknown model 'resnet05'" in done.stderr and "Traceback" not in done.stderr


def test_train_command_reports_accuracy(tmp_path):
    done = run("train", "lenet5", "--data", "digits", "--epochs", "2", "--out",
               str(tmp_path / "run"))
    assert done.returncode == 0, done.stderr
    assert "test top-1 accuracy:" in done.stdout
    accuracy = float(done.stdout.split("test top-1 accuracy:")[1].split()[0])
    assert 0.5 < accuracy <= 1.0
    assert (tmp_path / "run" / "lenet5.keras").is_file()
    assert (tmp_path / "run" / "1" / "saved_model.pb").is_file()
