"""``kvision list``: the table of all networks, profiled once and cached."""

from __future__ import annotations

import json
import os


def add_parser(subparsers):
    """Add the ``list`` sub-command to an ``argparse`` sub-parser set."""
    p = subparsers.add_parser("list", help="the table of all networks")
    p.add_argument("--task", default=None)
    p.add_argument("--names-only", action="store_true")
    p.add_argument("--no-cache", action="store_true", help="profile again")
    p.add_argument("--markdown", action="store_true", help="a Markdown table")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    """Print the networks' names, or their table (plain text or Markdown)."""
    from kvision.models import get_info, list_models

    # Grouped by task, classifiers first (the order of the README's table).
    names = sorted(list_models(task=args.task),
                   key=lambda n: (get_info(n).task != "classification", get_info(n).task, n))
    if args.names_only:
        print("\n".join(names))
        return 0
    rows = zoo_table(names, use_cache=not args.no_cache)
    print(format_markdown(rows) if args.markdown else format_table(rows))
    return 0


def _profile_cache_path():
    home = os.environ.get("KERAS_HOME", os.path.join(os.path.expanduser("~"), ".keras"))
    import kvision

    return os.path.join(home, "kvision", f"profiles-{kvision.__version__}.json")


# What a cached profile holds; an entry missing one (an older cache) is profiled again.
_PROFILE_KEYS = ("params", "trainable", "gflops", "size_mb", "input_shape")


def _read_profiles(path):
    """The cached profiles, or none where the file is missing or unreadable."""
    try:
        with open(path) as f:
            cache = json.load(f)
    except (OSError, ValueError):
        return {}
    return cache if isinstance(cache, dict) else {}


def _write_profiles(path, cache):
    """Write the cache atomically: a run killed mid-write leaves the old file."""
    from kvision._files import write_text_atomically

    write_text_atomically(path, json.dumps(cache, indent=1))


def _profile_network(name):
    """The cache entry of one network, built at its default size."""
    import keras

    from kvision.models import create, profile

    p = profile(create(name))
    keras.backend.clear_session()
    return {"params": p.total_params, "trainable": p.trainable_params,
            "gflops": p.gflops, "size_mb": p.size_mb,
            "input_shape": list(p.input_shape)}


def zoo_table(names=None, use_cache=True, progress=True):
    """One row per network: name, task, year, key idea, input, params, GFLOPs, MB.

    Profiling builds each network at its default size once; each result is cached
    as soon as it is computed, in the Keras home directory (``~/.keras/kvision``) per
    kvision version, so an interrupted ``kvision list`` keeps what it profiled.
    """
    from tqdm import tqdm

    from kvision.models import get_info, list_models

    names = names or list_models()
    path = _profile_cache_path()
    cache = _read_profiles(path) if use_cache else {}
    known = {n for n in names if isinstance(cache.get(n), dict)
             and all(k in cache[n] for k in _PROFILE_KEYS)}
    rows = []
    for name in tqdm(names, desc="profiling", disable=not progress or len(known) == len(names)):
        if name not in known:
            cache[name] = _profile_network(name)
            if use_cache:
                _write_profiles(path, cache)
        info = get_info(name)
        height, width = cache[name]["input_shape"][:2]
        row = {"name": name, "task": info.task, "year": info.year,
               "key_idea": info.key_idea,
               "input": str(height) if height == width else f"{height}x{width}",
               **cache[name]}
        # The count in the convention of the network's reference figure.
        row["counted"] = row["trainable" if info.params_convention == "trainable" else "params"]
        rows.append(row)
    return rows


def format_table(rows):
    """The zoo table as plain text, one network a line."""
    task = max([len("task")] + [len(r["task"]) for r in rows]) + 2
    header = (f"{'name':<22}{'task':<{task}}{'year':>4}  {'key idea':<40}{'input':>8}"
              f"{'params':>14}{'GFLOPs':>9}{'MB':>9}")
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(f"{r['name']:<22}{r['task']:<{task}}{r['year']:>4}  "
                     f"{r['key_idea'][:39]:<40}{r['input']:>8}"
                     f"{r['counted']:>14,}{r['gflops']:>9.2f}{r['size_mb']:>9.1f}")
    lines.append("params counted as each network's reference counts them (keras.applications: "
                 "all variables; torchvision/timm/papers: trainable only); GFLOPs = "
                 "multiply-accumulates of one image at the input size, as the papers count; "
                 "MB = float32 weights.")
    return "\n".join(lines)


def format_markdown(rows):
    """The zoo table as Markdown, with each count's reference."""
    from kvision.models import get_info

    lines = ["| name | task | year | key idea | input | params | GFLOPs | MB | = reference |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        info = get_info(r["name"])
        same = "yes" if r["counted"] == info.num_params else f"NO: {info.num_params:,}"
        lines.append(f"| `{r['name']}` | {r['task']} | {r['year']} | {r['key_idea']} | "
                     f"{r['input']} | {r['counted']:,} | {r['gflops']:.2f} | "
                     f"{r['size_mb']:.1f} | {same}, {info.params_source} |")
    return "\n".join(lines)
