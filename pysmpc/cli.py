"""The `pysmpc` command line: demo, inspect, worker, serve, query."""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

__all__ = ["main"]


def _demo(args) -> int:
    from pysmpc import LocalCluster, load_model
    from pysmpc.models import load_samples, shipped_model_path
    from pysmpc.parties.channel import is_offline_tag

    model = load_model(args.model or shipped_model_path())
    images, labels = load_samples()
    count = min(args.images, len(images))
    if args.tcp:
        from pysmpc.runtime.tcp import TcpCluster

        cluster = TcpCluster(spawn=True)
        where = "three worker processes over TCP"
    else:
        cluster = LocalCluster()
        where = "three in-process parties"
    print(f"Private predictions of {count} MNIST test images with {where}.", flush=True)
    with cluster:
        shared = model.share(cluster)
        cluster.reset_stats()
        start = time.perf_counter()
        correct = 0
        for i in _progress(range(count), args.progress, "images"):
            predicted = int(shared.predict(images[i : i + 1], reveal=args.reveal).reshape(-1).argmax()
                            if args.reveal == "logits" else shared.predict(images[i : i + 1], reveal="argmax")[0])
            correct += predicted == labels[i]
            print(f"Actual: {labels[i]}, predicted: {predicted}", flush=True)
        elapsed = time.perf_counter() - start
        stats = cluster.stats()
    online = sum(s["bytes_sent"] for p in ("P0", "P1") for t, s in stats[p].items() if not is_offline_tag(t))
    dealer = sum(s["bytes_sent"] for s in stats["P2"].values())
    rounds = sum(s["rounds"] for t, s in stats["P0"].items() if not is_offline_tag(t) and t not in ("input",))
    print(f"{correct}/{count} correct; {1000 * elapsed / count:.1f} ms per image; "
          f"online traffic {online / count / 1e3:.1f} kB per image (P0 + P1); "
          f"dealer material {dealer / count / 1e3:.1f} kB per image; {rounds / count:.0f} rounds per image")
    return 0


def _inspect(args) -> int:
    from pysmpc import LocalCluster, load_model

    model = load_model(args.model)
    print(model.summary())
    for note in model.graph.notes:
        print(f"note: {note}")
    with LocalCluster() as cluster:
        shared = model.share(cluster)
        costs = shared.cost(args.batch)
    print(f"\nsecure cost per inference of a batch of {args.batch} (online, each computing party):")
    print(f"{'layer':<16}{'rounds':>8}{'bytes sent':>14}{'dealer bytes':>14}")
    for name, c in costs:
        print(f"{name:<16}{c.rounds:>8}{c.bytes_sent:>14,}{c.dealer_bytes:>14,}")
    total_rounds = sum(c.rounds for _, c in costs)
    total_bytes = sum(c.bytes_sent for _, c in costs)
    print(f"{'total':<16}{total_rounds:>8}{total_bytes:>14,}{sum(c.dealer_bytes for _, c in costs):>14,}")
    return 0


def _worker(args) -> int:
    from pysmpc.runtime.worker import main as worker_main

    return worker_main(args.worker_args)


def _progress(iterable, enabled: bool, unit: str):
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, unit=unit, file=sys.stderr, leave=False)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pysmpc", description="Secure multi-party computation for private ML.")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="private predictions of shipped MNIST images with the shipped CNN")
    demo.add_argument("--tcp", action="store_true", help="three worker processes over TCP instead of threads")
    demo.add_argument("--images", type=int, default=3, help="how many of the shipped test images (default 3)")
    demo.add_argument("--reveal", choices=("logits", "argmax"), default="logits",
                      help="reveal logits to the client, or only the label via the secure argmax")
    demo.add_argument("--model", help="a model file instead of the shipped one")
    demo.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    demo.set_defaults(fn=_demo)

    inspect = sub.add_parser("inspect", help="layers, shapes and the secure cost of a model file")
    inspect.add_argument("model")
    inspect.add_argument("--batch", type=int, default=1)
    inspect.set_defaults(fn=_inspect)

    worker = sub.add_parser("worker", help="start one party of a TCP cluster (see --help of the worker)",
                            add_help=False)
    worker.add_argument("worker_args", nargs=argparse.REMAINDER)
    worker.set_defaults(fn=_worker)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (ValueError, OSError, RuntimeError) as exc:
        print(f"pysmpc {args.command}: error: {exc}", file=sys.stderr)
        return 2
