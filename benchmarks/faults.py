"""Faults (issue 21): ``kvision export`` and ``kvision train`` killed with SIGKILL at
random moments, exports racing into one folder, trains racing into one run folder.

Every command runs as its own process (``python -m kvision.cli``), as a user's would.
Seeded: the kill moments are ``random.Random(seed)`` draws, uniform over the length of
an unkilled run of the same command measured first.

- **export kills**: a trained LeNet-5 (``.keras``) is exported into one folder (version
  1, unkilled), then ``kvision export`` is started and killed ``--kills`` times. After
  every kill: each integer-named folder holds the complete file list of version 1
  (TF Serving loads integer-named folders only), every version seen before is
  byte-identical, the ``.keras`` file is byte-identical, anything else in the folder
  is hidden (a name TF Serving ignores); the next export removes the leftovers of the
  killed ones (it says so on stderr). An unkilled export ends the series.
- **export races**: ``--rounds`` times, two ``kvision export`` into the same folder at
  once: both succeed with two distinct, complete versions.
- **train kills**: ``kvision train lenet5`` (digits, ``--epochs`` epochs) is killed at a
  random moment, then the same command is started again, and so on; each series of
  ``--kills-per-run`` kills ends with an unkilled start that finishes. After every
  kill: the manifest reads, ``checkpoints/last.keras`` (if any) is a whole zip, the
  backup's metadata names a weights file that exists, version folders are complete,
  other leftovers hidden. Held-out accuracy of the killed-and-resumed runs is printed
  beside that of unkilled runs of the same seeds.
- **train races**: two ``kvision train`` into one ``--out``: the second refuses (exit
  status 2, one line naming the first's pid), the first finishes.

    python benchmarks/faults.py [--seed 0] [--kills 20] [--rounds 20]
        [--train-runs 5 --kills-per-run 4] [--epochs 4] [--parts export,race,train,lock]

Figures are counts; the seconds printed are wall time of contended runs (2 cores
shared), given only to say how long the harness took.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
import zipfile

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}
KVISION = [sys.executable, "-m", "kvision.cli"]


def start(args, **kwargs):
    return subprocess.Popen(KVISION + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=ENV, **kwargs)


def finish(process, timeout=900):
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def run(args, timeout=900):
    started = time.perf_counter()
    code, out, err = finish(start(args), timeout)
    return code, out, err, time.perf_counter() - started


def kill_after(args, seconds):
    """Start ``kvision args``, SIGKILL it after ``seconds`` (or let it end first);
    ``(killed, returncode, stderr)``."""
    process = start(args)
    try:
        process.wait(timeout=seconds)
        killed = False
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGKILL)
        killed = True
    code, _, err = finish(process)
    return killed, code, err


def digest(path):
    """``{relative path: sha1}`` of every file under ``path`` (or of the file)."""
    if os.path.isfile(path):
        with open(path, "rb") as f:
            return {"": hashlib.sha1(f.read()).hexdigest()}
    found = {}
    for folder, _, files in os.walk(path):
        for name in files:
            full = os.path.join(folder, name)
            with open(full, "rb") as f:
                found[os.path.relpath(full, path)] = hashlib.sha1(f.read()).hexdigest()
    return found


def versions(folder):
    return sorted(int(d) for d in os.listdir(folder) if re.fullmatch(r"\d+", d))


def check_export_folder(folder, layout, seen, keras_path, keras_digest):
    """Problems in ``folder`` after a kill, as sentences (empty: none). ``layout``:
    the file list of a complete version; ``seen``: version -> digest, updated."""
    problems = []
    for v in versions(folder):
        files = digest(os.path.join(folder, str(v)))
        if set(files) != layout:
            problems.append(f"version {v} incomplete: {sorted(layout - set(files))[:3]} "
                            f"missing")
        elif v in seen and seen[v] != files:
            problems.append(f"version {v} changed")
        seen.setdefault(v, files)
    visible = [n for n in os.listdir(folder) if not re.fullmatch(r"\d+", n)
               and not n.startswith(".") and not n.endswith((".keras", ".txt"))]
    if visible:
        problems.append(f"non-hidden leftovers {visible}")
    if digest(keras_path) != keras_digest:
        problems.append("the .keras file changed")
    return problems


def leftovers(folder):
    return sorted(n for n in os.listdir(folder) if n.startswith(".export-")
                  or n.startswith(".replaced-"))


def export_kills(work, model, kills, rng, report):
    out = os.path.join(work, "kills")
    args = ["export", model, "--out", out, "--format", "savedmodel"]
    code, _, err, seconds = run(args)
    assert code == 0, err
    layout = set(digest(os.path.join(out, "1")))
    keras_digest = digest(model)
    seen, problems, killed, cleaned_notes, max_leftovers, during = {}, [], 0, 0, 0, 0
    for i in range(kills):
        moment = rng.uniform(0.0, seconds)
        was_killed, code, err = kill_after(args, moment)
        killed += was_killed
        cleaned_notes += err.count("left by an export that was killed")
        problems += [f"kill {i} at {moment:.1f} s: {p}" for p in
                     check_export_folder(out, layout, seen, model, keras_digest)]
        max_leftovers = max(max_leftovers, len(leftovers(out)))
        during += bool(leftovers(out))
        print(f"export kill {i + 1}/{kills} at {moment:.1f} s: killed {was_killed}, "
              f"versions {versions(out)}, leftovers {leftovers(out)}, problems "
              f"{len(problems)}", flush=True)
        if not was_killed and code != 0:
            problems.append(f"run {i} ended {code}: {err.strip()[-200:]}")
    stale = len(leftovers(out))
    code, _, err, _ = run(args)
    cleaned_notes += err.count("left by an export that was killed")
    problems += check_export_folder(out, layout, seen, model, keras_digest)
    if code != 0:
        problems.append(f"the last export failed: {err.strip()[-200:]}")
    report.append(("SIGKILL `kvision export` at a random moment (uniform over an "
                   f"unkilled export's {seconds:.0f} s), then check the folder",
                   f"{kills} starts, {killed} killed",
                   f"{len(problems)} problems; versions 1..{max(versions(out))} all "
                   f"complete and unchanged, the .keras file unchanged; {during} kills "
                   f"left hidden folders (at most {max_leftovers} at once; TF Serving "
                   f"ignores them), {stale} after the series, {len(leftovers(out))} after one "
                   f"more export ({cleaned_notes} removals reported on stderr)"))
    return problems


def export_races(work, model, rounds, report):
    out = os.path.join(work, "races")
    problems = []
    for i in range(rounds):
        before = set(versions(out)) if os.path.isdir(out) else set()
        pair = [start(["export", model, "--out", out, "--format", "savedmodel"])
                for _ in range(2)]
        results = [finish(p) for p in pair]
        new = set(versions(out)) - before
        failed = [r[2].strip()[-200:] for r in results if r[0] != 0]
        if failed or len(new) != 2:
            problems.append(f"round {i}: new versions {sorted(new)}, failures {failed}")
        print(f"export race {i + 1}/{rounds}: new versions {sorted(new)}, failures "
              f"{len(failed)}", flush=True)
        layout = set(digest(os.path.join(out, "1")))
        for v in new:
            if set(digest(os.path.join(out, str(v)))) != layout:
                problems.append(f"round {i}: version {v} incomplete")
    report.append(("two `kvision export` into one folder at once", f"{rounds} rounds",
                   f"{len(problems)} problems; {len(versions(out))} distinct complete "
                   f"versions (1..{max(versions(out))}), each checked by its export in "
                   f"TF Serving's session loader"))
    return problems


def accuracy(out):
    """The finished run's held-out accuracy: the last ``val_accuracy`` of its log (the
    test split, measured on the final weights; a run killed after it finished printed
    nothing)."""
    import csv

    with open(os.path.join(out, "training_log.csv")) as f:
        return float(list(csv.DictReader(f))[-1]["val_accuracy"])


def check_run_folder(out, layout):
    problems = []
    if not os.path.isdir(out):
        return problems
    manifest = os.path.join(out, "run.json")
    if os.path.exists(manifest):
        try:
            json.load(open(manifest))
        except ValueError:
            problems.append("run.json unreadable")
    last = os.path.join(out, "checkpoints", "last.keras")
    if os.path.exists(last):
        try:
            with zipfile.ZipFile(last) as archive:
                if archive.testzip() is not None:
                    problems.append("last.keras corrupt")
        except zipfile.BadZipFile:
            problems.append("last.keras is not a whole zip")
    meta = os.path.join(out, "backup", "training_metadata.json")
    if os.path.exists(meta):
        try:
            named = json.load(open(meta)).get("weights", "latest.weights.h5")
            if not os.path.isfile(os.path.join(out, "backup", named)):
                problems.append(f"backup names {named}, which is missing")
        except ValueError:
            problems.append("backup metadata unreadable")
    for v in versions(out):
        if layout and set(digest(os.path.join(out, str(v)))) != layout:
            problems.append(f"version {v} incomplete")
    visible = [n for n in os.listdir(out) if n not in (
        "run.json", "run.lock", "backup", "checkpoints", "training_log.csv",
        "training_curves.png", "class_names.txt", "lenet5.keras")
        and not n.startswith(".") and not n.isdigit()]
    if visible:
        problems.append(f"non-hidden leftovers {visible}")
    return problems


def _state(out):
    try:
        return json.load(open(os.path.join(out, "run.json"))).get("state")
    except (OSError, ValueError):
        return None


def train_kills(work, runs, kills_per_run, epochs, rng, report, window=None,
                layout_from=None, seeds=None):
    """``window``, ``layout_from``: the kill window (seconds) and a finished run folder
    measured before, instead of unkilled runs here (a series split over processes)."""
    plain = []
    layout, seconds = None, window
    if layout_from:
        layout = set(digest(os.path.join(layout_from, "1")))
    for seed in range(runs) if window is None else ():
        out = os.path.join(work, f"plain-{seed}")
        code, _, err, took = run(["train", "lenet5", "--epochs", str(epochs),
                                       "--out", out, "--seed", str(seed)])
        assert code == 0, err
        plain.append(accuracy(out))
        print(f"unkilled run seed {seed}: accuracy {plain[-1]} in {took:.0f} s", flush=True)
        layout = set(digest(os.path.join(out, "1")))
        seconds = took if seconds is None else max(seconds, took)
    problems, resumed, killed, starts, finished_versions = [], [], 0, 0, []
    for seed in seeds if seeds is not None else range(runs):
        out = os.path.join(work, f"killed-{seed}")
        args = ["train", "lenet5", "--epochs", str(epochs), "--out", out,
                "--seed", str(seed)]
        for k in range(kills_per_run):
            moment = rng.uniform(0.0, seconds)
            was_killed, code, err = kill_after(args, moment)
            starts += 1
            killed += was_killed
            problems += [f"run {seed} kill {k} at {moment:.1f} s: {p}"
                         for p in check_run_folder(out, layout)]
            print(f"train run {seed} start {k + 1} at {moment:.1f} s: killed {was_killed}, "
                  f"state {_state(out)}, problems {len(problems)}", flush=True)
            if not was_killed and code != 0:
                problems.append(f"run {seed} start {k} ended {code}: {err.strip()[-200:]}")
            if _state(out) == "finished":
                break  # it finished before the kill: the series ends early
        if _state(out) != "finished":
            code, stdout, err, _ = run(args)
            starts += 1
            if code != 0:
                problems.append(f"run {seed}: the last start failed: {err.strip()[-300:]}")
                continue
        if os.path.isdir(out + "-2"):
            problems.append(f"run {seed}: restarted into {out}-2, not resumed")
        resumed.append(accuracy(out))
        print(f"killed run seed {seed} finished: accuracy {resumed[-1]}", flush=True)
        finished_versions.append(len(versions(out)))
        problems += check_run_folder(out, layout)
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    report.append((f"SIGKILL `kvision train lenet5` ({epochs} epochs, digits) at a random "
                   f"moment (uniform over an unkilled run's {seconds:.0f} s), then the "
                   f"same command again", f"{killed} kills in {starts} starts over "
                   f"{runs} runs",
                   f"{len(problems)} problems; every run finished in its own folder with "
                   f"{sorted(set(finished_versions))} version(s); held-out accuracy "
                   f"{' '.join(f'{a:.4f}' for a in resumed if a is not None)} (mean "
                   f"{mean([a for a in resumed if a is not None]):.4f})"
                   + (f" against unkilled runs of the same seeds "
                      f"{' '.join(f'{a:.4f}' for a in plain)} (mean {mean(plain):.4f})"
                      if plain else "")))
    return problems


def train_race(work, epochs, report):
    out = os.path.join(work, "race")
    # Long enough that the first is still training when the second reaches the lock.
    args = ["train", "lenet5", "--epochs", str(10 * epochs), "--out", out]
    first = start(args)
    deadline = time.monotonic() + 300
    while not os.path.exists(os.path.join(out, "run.json")) and time.monotonic() < deadline:
        time.sleep(0.1)
    code, _, err, _ = run(args)
    first_code, _, first_err = finish(first)
    problems = []
    lines = err.strip().splitlines()
    if code != 2 or len(lines) != 1 or str(first.pid) not in err:
        problems.append(f"the second train: status {code}, stderr {err.strip()[-300:]!r}")
    if first_code != 0 or os.path.isdir(out + "-2"):
        problems.append(f"the first train: status {first_code}, {first_err.strip()[-200:]}")
    report.append(("a second `kvision train` into the `--out` of a running one", "1",
                   f"{len(problems)} problems; it refused: {lines[-1] if lines else ''!r}; "
                   f"the first finished"))
    return problems


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--train-runs", type=int, default=5)
    parser.add_argument("--kills-per-run", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--parts", default="export,race,train,lock")
    parser.add_argument("--seeds", default=None, help="train: the killed runs' seeds "
                        "(default 0 .. --train-runs - 1)")
    parser.add_argument("--window", type=float, default=None,
                        help="train: kill within this many seconds, instead of measuring "
                             "unkilled runs first (with --layout-from)")
    parser.add_argument("--layout-from", default=None,
                        help="train: a finished run folder whose version is complete")
    parser.add_argument("--work", default=None, help="default: a temporary folder")
    args = parser.parse_args()
    parts = args.parts.split(",")
    work = args.work or tempfile.mkdtemp(prefix="kvision-faults-")
    rng = random.Random(args.seed)
    started = time.perf_counter()
    model_dir = os.path.join(work, "model")
    model = os.path.join(model_dir, "lenet5.keras")
    if not os.path.isfile(model) and ("export" in parts or "race" in parts):
        code, _, err, _ = run(["train", "lenet5", "--epochs", "2", "--no-export",
                               "--out", model_dir])
        assert code == 0, err
    report, problems = [], []
    if "export" in parts:
        problems += export_kills(work, model, args.kills, rng, report)
        print(report[-1], flush=True)
    if "race" in parts:
        problems += export_races(work, model, args.rounds, report)
        print(report[-1], flush=True)
    if "train" in parts:
        seeds = None if args.seeds is None else [int(x) for x in args.seeds.split(",")]
        problems += train_kills(work, args.train_runs, args.kills_per_run, args.epochs,
                                rng, report, args.window, args.layout_from, seeds)
        print(report[-1], flush=True)
    if "lock" in parts:
        problems += train_race(work, args.epochs, report)
        print(report[-1], flush=True)
    print(f"\n{len(problems)} problems in {time.perf_counter() - started:.0f} s "
          f"(work folder {work})")
    for problem in problems:
        print("  " + problem)
    print("\n| what was tried | how many times | what happened |\n|---|---|---|")
    for row in report:
        print("| " + " | ".join(row) + " |")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
