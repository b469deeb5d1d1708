"""kvision.retrieval.Index vs scikit-learn's brute-force NearestNeighbors.

For index sizes 1k, 10k and 100k random unit vectors (dim 256), both search the same
data for the same queries in this one process, alternately, and the best of
``--rounds`` is kept. Prints the time per query of each, the ratio kvision/sklearn
(below 1 = kvision faster), and how kvision's time per query grows with index size
(exact search is linear in it: 10x the vectors should cost about 10x per query).

    python benchmarks/retrieval_speed.py [--metric cosine] [--queries 1000] [--k 10]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from sklearn.neighbors import NearestNeighbors

from kvision.retrieval import Index

SIZES = (1_000, 10_000, 100_000)


def unit_vectors(n, dim, rng):
    x = rng.normal(size=(n, dim)).astype("float32")
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def best_time(fn, rounds):
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def compare(size, dim, n_queries, k, metric, rounds, rng):
    """Seconds per query for kvision and sklearn, and their top-k agreement."""
    data, queries = unit_vectors(size, dim, rng), unit_vectors(n_queries, dim, rng)
    ours = Index(metric=metric).add(data)
    theirs = NearestNeighbors(n_neighbors=k, metric=metric, algorithm="brute").fit(data)
    ours_s = theirs_s = float("inf")
    for _ in range(rounds):  # alternate, so machine load hits both alike
        ours_s = min(ours_s, best_time(lambda: ours.query(queries, k), 1))
        theirs_s = min(theirs_s, best_time(lambda: theirs.kneighbors(queries), 1))
    agree = (ours.query(queries, k)[0] == theirs.kneighbors(queries)[1]).mean()
    return ours_s / n_queries, theirs_s / n_queries, agree


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--metric", default="cosine", choices=("cosine", "euclidean"))
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    print(f"metric={args.metric} dim={args.dim} queries={args.queries} k={args.k} "
          f"(best of {args.rounds})")
    print(f"{'size':>8} {'kvision us/q':>13} {'sklearn us/q':>13} {'ratio':>7} "
          f"{'growth':>7} {'top-k agree':>12}")
    first = None
    for size in SIZES:
        ours, theirs, agree = compare(size, args.dim, args.queries, args.k, args.metric,
                                      args.rounds, rng)
        first = first or (size, ours)
        growth = ours / first[1]
        print(f"{size:>8} {ours * 1e6:>13.1f} {theirs * 1e6:>13.1f} {ours / theirs:>7.2f} "
              f"{growth:>6.1f}x {agree:>12.4f}")
    print(f"growth = kvision time per query relative to {first[0]} vectors "
          f"(linear search: {SIZES[-1] // first[0]}x the vectors)")


if __name__ == "__main__":
    main()
