"""``kvision list``: the table of all networks, profiled once and cached, with each
network's published ImageNet accuracy; ``--plot`` draws the zoo's chart."""

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
    p.add_argument("--plot", default=None, metavar="PNG",
                   help="also draw the ILSVRC top-5 error by year and the published "
                        "top-1 against GFLOPs to this PNG file")
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
    if args.plot is not None and not args.plot.lower().endswith(".png"):
        raise ValueError(f"--plot writes a PNG file: expected a path ending in .png, "
                         f"got {args.plot!r}.")
    rows = zoo_table(names, use_cache=not args.no_cache)
    print(format_markdown(rows) if args.markdown else format_table(rows))
    if args.plot is not None:
        data = plot_zoo(rows, args.plot)
        print(f"wrote {args.plot}: {len(data['lineage'])} ILSVRC entries, "
              f"{len(data['tradeoff'])} networks with a published top-1")
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
        accuracy = info.accuracy or {}
        row = {"name": name, "task": info.task, "year": info.year,
               "key_idea": info.key_idea, "top1": accuracy.get("top1"),
               "top5": accuracy.get("top5"),
               "input": str(height) if height == width else f"{height}x{width}",
               **cache[name]}
        # The count in the convention of the network's reference figure.
        row["counted"] = row["trainable" if info.params_convention == "trainable" else "params"]
        rows.append(row)
    return rows


def _percent(value):
    """A published accuracy as printed: ``-`` where there is none."""
    return "-" if value is None else f"{value:.1f}"


def format_table(rows):
    """The zoo table as plain text, one network a line."""
    task = max([len("task")] + [len(r["task"]) for r in rows]) + 2
    header = (f"{'name':<22}{'task':<{task}}{'year':>4}  {'key idea':<40}{'input':>8}"
              f"{'params':>14}{'GFLOPs':>9}{'MB':>9}{'top-1':>7}{'top-5':>7}")
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(f"{r['name']:<22}{r['task']:<{task}}{r['year']:>4}  "
                     f"{r['key_idea'][:39]:<40}{r['input']:>8}"
                     f"{r['counted']:>14,}{r['gflops']:>9.2f}{r['size_mb']:>9.1f}"
                     f"{_percent(r.get('top1')):>7}{_percent(r.get('top5')):>7}")
    lines.append("params counted as each network's reference counts them (keras.applications: "
                 "all variables; torchvision/timm/papers: trainable only); GFLOPs = "
                 "multiply-accumulates of one image at the input size, as the papers count; "
                 "MB = float32 weights; top-1/top-5 = published ImageNet validation accuracy "
                 "(%, --markdown gives each figure's source; - where none is published or the "
                 "network was never trained on ImageNet).")
    return "\n".join(lines)


def format_markdown(rows):
    """The zoo table as Markdown, with each count's reference."""
    from kvision.models import get_info

    lines = ["| name | task | year | key idea | input | params | GFLOPs | MB | = reference "
             "| ImageNet top-1 / top-5 % (source) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        info = get_info(r["name"])
        same = "yes" if r["counted"] == info.num_params else f"NO: {info.num_params:,}"
        accuracy = (f"{_percent(r['top1'])} / {_percent(r['top5'])} "
                    f"({info.accuracy['source']})" if info.accuracy else
                    "none: not trained on ImageNet")
        lines.append(f"| `{r['name']}` | {r['task']} | {r['year']} | {r['key_idea']} | "
                     f"{r['input']} | {r['counted']:,} | {r['gflops']:.2f} | "
                     f"{r['size_mb']:.1f} | {same}, {info.params_source} | {accuracy} |")
    return "\n".join(lines)


# Russakovsky et al. 2015 (IJCV), section 6.4: one trained annotator's top-5 error
# on 1,500 ILSVRC-2012 test images, the "human" line of the ILSVRC charts.
HUMAN_TOP5_ERROR = 5.1


def zoo_chart_data(rows):
    """What :func:`plot_zoo` draws, from :func:`zoo_table` rows and the registry:

    ``lineage``: ``(name, family, year, top-5 error %, entry)`` of each ILSVRC entry
    (``ModelInfo.ilsvrc``, test set), by year; ``published``: ``(name, year, top-5
    error %)`` of every network with a published top-5 (single model, validation);
    ``tradeoff``: ``(name, family, GFLOPs, top-1 %)`` of every network with a
    published top-1.
    """
    from kvision.models import get_info

    lineage, published, tradeoff = [], [], []
    for r in rows:
        info = get_info(r["name"])
        if info.ilsvrc:
            lineage.append((r["name"], info.family, info.ilsvrc["year"],
                            info.ilsvrc["top5_error"], info.ilsvrc["entry"]))
        if info.accuracy and info.accuracy["top5"] is not None:
            published.append((r["name"], info.year, round(100 - info.accuracy["top5"], 3)))
        if info.accuracy:
            tradeoff.append((r["name"], info.family, r["gflops"], info.accuracy["top1"]))
    lineage.sort(key=lambda entry: (entry[2], -entry[3]))
    return {"lineage": lineage, "published": published, "tradeoff": tradeoff,
            "human_top5_error": HUMAN_TOP5_ERROR}


def plot_zoo(rows, path):
    """The seeds' chart of the zoo, to ``path`` (PNG, written through a temporary
    file): ILSVRC's top-5 error by year from AlexNet on, next to each network's
    published top-1 against its GFLOPs. Returns :func:`zoo_chart_data`'s dict, the
    points drawn."""
    from kvision.visualization.plots import _pyplot, _save

    data = zoo_chart_data(rows)
    if not data["tradeoff"]:
        raise ValueError("None of the listed networks has a published ImageNet "
                         "accuracy to plot (list classifiers: --task classification).")
    plt = _pyplot()
    figure, (left, right) = plt.subplots(1, 2, figsize=(14, 6))
    if data["published"]:
        _, years, errors = zip(*data["published"])
        left.scatter(years, errors, color="0.75", s=14,
                     label="zoo networks, single model (validation)")
    if data["lineage"]:
        _, families, years, errors, _ = zip(*data["lineage"])
        left.plot(years, errors, "o-", color="tab:red",
                  label="ILSVRC entry of the family (test set)")
        for family, year, error in zip(families, years, errors):
            left.annotate(f"{family} {error:g}%", (year, error),
                          textcoords="offset points", xytext=(4, 4), fontsize=8)
    left.axhline(data["human_top5_error"], color="tab:blue", linestyle="--",
                 label=f"human {data['human_top5_error']}% (Russakovsky et al. 2015)")
    left.set(xlabel="year", ylabel="top-5 error (%)", title="ImageNet top-5 error by year")
    left.legend(fontsize=8)
    families = sorted({family for _, family, _, _ in data["tradeoff"]})
    colors = plt.get_cmap("tab20")
    for i, family in enumerate(families):
        points = [(g, a, n) for n, f, g, a in data["tradeoff"] if f == family]
        right.scatter([p[0] for p in points], [p[1] for p in points],
                      color=colors(i % 20), label=family, s=18)
        for g, a, n in points:
            right.annotate(n, (g, a), textcoords="offset points", xytext=(3, 2), fontsize=6)
    right.set_xscale("log")
    right.set(xlabel="GMACs per image at the default input size (log)",
              ylabel="published top-1 (%)", title="ImageNet top-1 against compute")
    right.legend(fontsize=6, ncol=2)
    figure.tight_layout()
    try:
        _save(figure, path)
    finally:
        plt.close(figure)
    return data
