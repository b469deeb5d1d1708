"""retrieval.Index backends side by side: recall@10 against exact search and queries
per second, at 10^4, 10^5 and 10^6 vectors of dimension 128.

Every index searches the same data for the same queries in this one process; query
rounds alternate between the indexes (so machine load hits all alike) and the best of
``--rounds`` is kept. scikit-learn's brute-force ``NearestNeighbors`` is the outside
reference for the exact index's speed. Build time is the add plus the FAISS build
(IVF-PQ's training, HNSW's graph). Speed is given as a ratio to the exact index (> 1 is
faster); recall@10 is the share of the exact 10 nearest that an index returns.

The data is embedding-like by default (points around 1,000 centres: neighbours that
mean something); ``--data gaussian`` draws plain noise, where approximate search is at
its worst and recall figures are much lower (FAISS's own benchmarks use SIFT/Deep1B).

    python benchmarks/retrieval_speed.py [--sizes 10000,100000,1000000] [--queries 1000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from kvision.retrieval import Index

INDEXES = (("exact", {}), ("faiss-flat", {}), ("faiss-ivfpq", {"nprobe": 16}),
           ("faiss-hnsw", {"ef_search": 64}))


def make_data(size, n_queries, dim, kind, rng):
    """float32 ``(size, dim)`` data and ``(n_queries, dim)`` queries from one law."""
    if kind == "gaussian":
        return (rng.standard_normal((size, dim), dtype="float32"),
                rng.standard_normal((n_queries, dim), dtype="float32"))
    centres = rng.standard_normal((1000, dim), dtype="float32")

    def draw(n):
        x = centres[rng.integers(0, len(centres), n)]
        x += 0.5 * rng.standard_normal((n, dim), dtype="float32")
        return x

    return draw(size), draw(n_queries)


def build(backend, options, metric, data):
    """The index with ``data`` added and its FAISS index built; seconds taken. Queries
    go in batches of ``2**27 / len(data)`` (at least 16): a 1,024-query batch against
    10^6 vectors would hold 4 GB of scores and 8 GB of partition indices."""
    start = time.perf_counter()
    batch_size = max(16, min(1024, (1 << 27) // len(data)))
    index = Index(metric, batch_size=batch_size, backend=backend, **options).add(data)
    index.query(data[:1], k=1)                 # builds (trains) the FAISS index
    return index, time.perf_counter() - start


def sklearn_seconds(data, queries, k, metric, rounds):
    from sklearn.neighbors import NearestNeighbors

    nn = NearestNeighbors(n_neighbors=k, metric=metric, algorithm="brute").fit(data)
    return min(_timed(lambda: nn.kneighbors(queries))[1] for _ in range(rounds))


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def compare(size, args, rng):
    """Rows (name, build s, queries/s, recall@10) for one index size."""
    data, queries = make_data(size, args.queries, args.dim, args.data, rng)
    built = {name: build(name, options, args.metric, data) for name, options in INDEXES}
    best = {name: float("inf") for name in built}
    answers = {}
    for _ in range(args.rounds):               # alternate the indexes round by round
        for name, (index, _) in built.items():
            answers[name], seconds = _timed(lambda: index.query(queries, args.k)[0])
            best[name] = min(best[name], seconds)
    truth = answers["exact"]
    rows = []
    for name, (_, build_s) in built.items():
        found = answers[name]
        recall = np.mean([len(np.intersect1d(a, b)) for a, b in zip(found, truth)]) / args.k
        rows.append((name, build_s, args.queries / best[name], recall))
    if args.sklearn:
        rows.append(("scikit-learn brute", 0.0,
                     args.queries / sklearn_seconds(data, queries, args.k, args.metric,
                                                    args.rounds), 1.0))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--metric", default="cosine", choices=("cosine", "euclidean"))
    parser.add_argument("--data", default="clustered", choices=("clustered", "gaussian"))
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-sklearn", dest="sklearn", action="store_false",
                        help="leave out scikit-learn's brute force")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    print(f"metric={args.metric} data={args.data} dim={args.dim} queries={args.queries} "
          f"k={args.k} (best of {args.rounds}); options: {dict(INDEXES)}")
    print(f"| vectors | index | build s | queries/s | vs exact | recall@{args.k} |")
    print("|---|---|---|---|---|---|")
    for size in (int(s) for s in args.sizes.split(",")):
        rows = compare(size, args, rng)
        exact_qps = rows[0][2]
        for name, build_s, qps, recall in rows:
            print(f"| {size:,} | {name} | {build_s:.1f} | {qps:,.0f} | "
                  f"{qps / exact_qps:.2f}x | {recall:.3f} |", flush=True)


if __name__ == "__main__":
    main()
