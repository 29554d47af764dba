"""The `pysmpc` command line: demo, inspect, serve, query, worker, certs, fl-demo, bench."""

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
    from pysmpc.serve.benchmark import traffic_per_image

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
        online = offline = 0.0
        correct = 0
        for i in _progress(range(count), args.progress, "images"):
            # As a server does while it waits: the dealer's material first (offline;
            # the secure argmax's is still dealt during the query).
            offline += shared.prepare(1)["seconds"]
            start = time.perf_counter()
            answer = shared.predict(images[i : i + 1], reveal=args.reveal)
            predicted = int(answer.reshape(-1).argmax() if args.reveal == "logits" else answer[0])
            online += time.perf_counter() - start
            correct += predicted == labels[i]
            print(f"Actual: {labels[i]}, predicted: {predicted}", flush=True)
        stats = cluster.stats()
    traffic = traffic_per_image(stats, count)
    rounds = sum(s["rounds"] for t, s in stats["P0"].items() if not is_offline_tag(t) and t not in ("input",))
    made_ahead = f" (its material made ahead in {1000 * offline / count:.1f} ms)" if offline else ""
    print(f"{correct}/{count} correct; {1000 * online / count:.1f} ms per image online{made_ahead}; "
          f"online traffic {traffic['online_bytes_per_image'] / 1e3:.1f} kB per image (P0 + P1); "
          f"dealer material {traffic['dealer_bytes_per_image'] / 1e3:.1f} kB per image; "
          f"{rounds / count:.0f} rounds per image")
    return 0


def _inspect(args) -> int:
    from pysmpc import load_model

    model = load_model(args.model, frac_bits=args.frac_bits)
    print(model.summary())
    costs = model.cost(args.batch)
    print(f"\nsecure cost per inference of a batch of {args.batch} (online, each computing party):")
    print(f"{'layer':<16}{'rounds':>8}{'bytes sent':>14}{'dealer bytes':>14}")
    for name, c in costs:
        print(f"{name:<16}{c.rounds:>8}{c.bytes_sent:>14,}{c.dealer_bytes:>14,}")
    total_rounds = sum(c.rounds for _, c in costs)
    total_bytes = sum(c.bytes_sent for _, c in costs)
    print(f"{'total':<16}{total_rounds:>8}{total_bytes:>14,}{sum(c.dealer_bytes for _, c in costs):>14,}")
    if args.calibrate:
        from pysmpc.graph.calibrate import calibration_report

        print()
        print(calibration_report(model.graph, args.calibrate, args.frac_bits))
    return 0


def _serve(args) -> int:
    from pysmpc import Cluster, Worker, load_model

    model = load_model(args.model)
    hosts = args.hosts.split(",")
    cluster = Cluster(*(Worker(h, auto_managed=not args.manual) for h in hosts), tls_dir=args.tls_dir,
                      allow_cleartext=args.allow_cleartext, max_frame_bytes=args.max_frame_bytes)
    print(f"starting the cluster on {', '.join(hosts)}" + (" (workers started by hand)" if args.manual else ""),
          flush=True)
    with cluster:
        model.share(cluster)
        print(f"serving {args.model} (input {model.input_shape}, output {model.output_shape}) "
              f"for {args.requests} requests", flush=True)
        start = time.perf_counter()
        served = model.serve(num_requests=args.requests, max_batch=args.max_batch, max_rows=args.max_rows)
        elapsed = time.perf_counter() - start
        model.stop_sharing()
    failed = cluster.last_serve["failed"]
    print(f"served {served} requests ({failed} refused) in {elapsed:.1f} s")
    return 0 if failed == 0 else 1


def _query(args) -> int:
    from pysmpc import Client, Cluster, Worker
    from pysmpc.models import load_samples
    from pysmpc.serve.images import load_image

    cluster = Cluster(*(Worker(h, auto_managed=False) for h in args.hosts.split(",")), tls_dir=args.tls_dir,
                      allow_cleartext=args.allow_cleartext)
    queries = [(path, load_image(path), None) for path in args.images]
    if args.sample:
        images, labels = load_samples()
        queries += [(f"sample {k}", images[k], int(labels[k])) for k in args.sample]
    if not queries:
        raise ValueError("nothing to query: give image files (.png, .npy) or --sample K")
    client = Client(timeout=args.timeout)
    for name, image, label in queries:
        client.connect_to_model(batch_input_shape=(1, *image.shape), batch_output_shape=(1, args.classes),
                                cluster=cluster)
        start = time.perf_counter()
        result = client.query_model(image, reveal=args.reveal)
        elapsed = 1000 * (time.perf_counter() - start)
        predicted = int(result[0].argmax()) if args.reveal == "logits" else int(result[0])
        actual = f"Actual: {label}, " if label is not None else f"{name}: "
        print(f"{actual}predicted: {predicted}  ({elapsed:.0f} ms)", flush=True)
        if args.reveal == "logits" and args.show_logits:
            print("  logits:", np.array2string(result[0], precision=3))
    return 0


def _fl_demo(args) -> int:
    from pysmpc.fl import FederatedConfig, load_mnist, run_federated

    cfg = FederatedConfig(owners=args.owners, rounds=args.rounds, epsilon=args.epsilon, delta=args.delta,
                          local_epochs=args.local_epochs, clip_norm=args.clip, lot_size=args.lot_size,
                          dp_lr=args.dp_lr,
                          train_subset=args.train_subset, test_subset=args.test_subset, dropout=args.dropout,
                          seed=args.seed, progress=args.progress)
    from pysmpc.fl.data import find_mnist

    cfg.data_dir = str(find_mnist(args.data))
    test = load_mnist(cfg.data_dir, "test")
    if args.in_process:
        from pysmpc import LocalCluster

        train = load_mnist(cfg.data_dir)
        cluster, where = LocalCluster(), "three in-process parties (owners are objects of this process)"
    else:
        from pysmpc.runtime.tcp import TcpCluster

        train = None  # each owner process loads its own part; this process never holds training data
        cfg.owner_processes, cfg.tls_dir = True, args.tls_dir
        cluster = TcpCluster(spawn=True, hosts=args.hosts.split(","), tls_dir=args.tls_dir)
        where = (f"three worker processes over TCP{' with TLS' if args.tls_dir else ''}; each owner in its own "
                 "process shares its update straight to P0 and P1")
    mode = f"DP-SGD, epsilon <= {cfg.epsilon} at delta {cfg.delta}" if cfg.epsilon is not None else "FedAvg, no DP"
    print(f"Federated training of the seed CNN on MNIST ({mode}); updates summed by {where}.", flush=True)
    try:
        with cluster:
            result = run_federated(cluster, cfg, train, test, log=lambda line: print(line, flush=True))
    except ImportError as exc:  # dp-accounting missing: the message names the extra
        print(f"pysmpc fl-demo: error: {exc}", file=sys.stderr)
        return 2
    print(f"{result.seconds:.0f} s in all")
    print(f"accuracy: {result.accuracy:.4f}")
    if result.epsilon is not None:
        print(f"epsilon: {result.epsilon:.3f}")
    return 0


def _fl_owner(args) -> int:
    from pysmpc.fl import Owner

    with np.load(args.update) as data:
        arrays = [data[k] for k in data.files]
    require_dp = {"noise_multiplier": args.min_noise_multiplier} if args.min_noise_multiplier else None
    owner = Owner(args.hosts, args.name, tls_dir=args.tls_dir, min_owners=args.min_owners, require_dp=require_dp,
                  allow_cleartext=args.allow_cleartext, timeout=args.timeout)
    receipt = owner.submit(args.round, arrays)
    dp = receipt.rules.get("dp")
    print(f"owner {args.name}: submitted {len(arrays)} arrays to round {args.round}: "
          f"{receipt.bytes_sent[0]} bytes of shares to P0 and {receipt.bytes_sent[1]} to P1; the round reveals sums of "
          f"at least {receipt.rules['min_owners']} owners"
          + (f", with DP noise multiplier {dp['noise_multiplier']:g} (clip {dp['clip_norm']:g})" if dp else ""))
    return 0


def _bench(args) -> int:
    import json

    from pysmpc import load_model
    from pysmpc.models import load_samples, shipped_model_path
    from pysmpc.serve.benchmark import measure_inference

    model = load_model(args.model or shipped_model_path())
    images, _ = load_samples()
    batches = [int(b) for b in args.batches.split(",")]
    clusters = ["plaintext", "in-process"] + ([] if args.no_tcp else ["tcp"])
    bar = None
    if args.progress:
        from tqdm import tqdm

        bar = tqdm(total=len(batches) * len(clusters), unit="run", file=sys.stderr, leave=False)
    rows = measure_inference(model, images, batches=batches, clusters=clusters, repeats=args.repeats, progress=bar)
    if bar is not None:
        bar.close()
    print(f"{'system':<28}{'batch':>6}{'latency ms':>12}{'images/s':>10}{'online kB/img':>15}"
          f"{'rounds':>8}{'offline ms':>12}{'dealer kB/img':>15}")
    for r in rows:
        online = f"{r['online_bytes_per_image'] / 1e3:.1f}" if "online_bytes_per_image" in r else "-"
        dealer = f"{r['dealer_bytes_per_image'] / 1e3:.1f}" if "dealer_bytes_per_image" in r else "-"
        offline = f"{r['offline_ms']:.1f}" if "offline_ms" in r else "-"
        print(f"{r['system']:<28}{r['batch']:>6}{r['latency_ms']:>12.2f}{r['images_per_s']:>10.0f}{online:>15}"
              f"{str(r.get('rounds', '-')):>8}{offline:>12}{dealer:>15}")
    print("latency: online, after the query arrives; offline: the dealer's material for one batch, made ahead")
    workers = [r["worker_peak_rss_mb"] for r in rows if "worker_peak_rss_mb" in r]
    if workers:
        print(f"largest worker peak memory (TCP): {max(workers):.0f} MB")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
        print(f"wrote {args.json}")
    return 0


def _certs(args) -> int:
    from pysmpc.parties.party import CLIENT, DEALER, P0, P1
    from pysmpc.parties.socket import parse_hosts
    from pysmpc.runtime.certs import LOOPBACK_NAMES, cert_host, endpoint_files, fingerprint, make_cluster_certs

    entries = [h for h in (args.hosts or "").split(",") if h.strip()]
    if args.hosts is not None and len(entries) != 3:
        raise ValueError(f"--hosts needs three hosts (P0, P1, P2), got {len(entries)}: {args.hosts!r}")
    party_hosts = {i: [cert_host(h)] for i, h in zip((P0, P1, DEALER), entries)}
    extra = [cert_host(h) for h in args.san or ()]
    # The --hosts the other commands take; a host given without a port gets their default port.
    hosts = ",".join(e.strip() if _has_port(e) else _host_port(party_hosts[i][0], 4000 + i)
                     for i, e in enumerate(entries)) or "HOST0:PORT,HOST1:PORT,HOST2:PORT"
    if entries:
        parse_hosts(hosts)  # a bad port is an error, before anything is written
    owners = [o.strip() for o in (args.owners or "").split(",") if o.strip()]
    directory = make_cluster_certs(args.directory, hosts=[*extra, *LOOPBACK_NAMES], party_hosts=party_hosts,
                                   days=args.days, overwrite=args.force, owners=owners)
    where = {i: f" at {party_hosts[i][0]}" if i in party_hosts else "" for i in (P0, P1, DEALER)}
    roles = [(P0, f"P0{where[P0]}"), (P1, f"P1{where[P1]}"), (DEALER, f"P2 (the dealer){where[DEALER]}"),
             (CLIENT, "the model owner (pysmpc serve) and every client (pysmpc query)")]
    print(f"Wrote a CA and certificates for P0, P1, P2 and the client to {directory}/ (valid {args.days} days).")
    print(f"CA fingerprint (SHA-256): {fingerprint(directory / 'ca.pem')}")
    print("\nCopy to each machine's TLS directory (its --tls-dir), over a channel you trust:")
    for index, role in roles:
        print(f"  {role}:\n      {' '.join(str(directory / f) for f in endpoint_files(index))}")
    for name in owners:
        print(f"  data owner {name} (pysmpc fl-owner --name {name}):\n      {directory / 'ca.pem'} "
              f"{directory / f'owner-{name}.pem'} {directory / f'owner-{name}.key'}")
    print(f"Keep {directory / 'ca.key'} off the workers (offline if you can): whoever has it can issue any "
          "party's certificate. Each .key (mode 0600) goes to its own machine only.")
    print("\nThen start each worker N (0, 1, 2) on its machine, serve, and query:")
    print(f"  pysmpc worker --party N --hosts {hosts} --tls-dir DIR")
    print(f"  pysmpc serve MODEL --manual --requests K --hosts {hosts} --tls-dir DIR")
    print(f"  pysmpc query IMAGE.png --hosts {hosts} --tls-dir DIR")
    return 0


def _has_port(entry: str) -> bool:
    text = entry.strip()
    return "]:" in text if text.startswith("[") else text.count(":") == 1


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _worker(args) -> int:
    from pysmpc.runtime.worker import main as worker_main

    return worker_main(args.worker_args)


def _progress(iterable, enabled: bool, unit: str):
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, unit=unit, file=sys.stderr, leave=False)


def build_parser() -> argparse.ArgumentParser:
    from pysmpc.parties.socket import DEFAULT_MAX_FRAME

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
    inspect.add_argument("--frac-bits", type=int, default=None, help="fixed-point fractional bits F (default 16)")
    inspect.add_argument("--calibrate", metavar="SAMPLES.npy",
                         help="sample inputs (.npy): report each layer's range against the fixed-point limits")
    inspect.set_defaults(fn=_inspect)

    hosts_default = "localhost:4000,localhost:4001,localhost:4002"
    serve = sub.add_parser("serve", help="share a model to three workers and answer N client queries")
    serve.add_argument("model")
    serve.add_argument("--requests", type=int, required=True, help="how many queries to answer")
    serve.add_argument("--hosts", default=hosts_default, help="host:port of P0,P1,P2")
    serve.add_argument("--manual", action="store_true",
                       help="connect to workers started by hand (pysmpc worker) instead of starting them")
    serve.add_argument("--tls-dir", help="cluster certificates (pysmpc certs) with ca.pem, client.pem/.key, "
                                          "and pN.pem/.key for the workers it starts")
    serve.add_argument("--allow-cleartext", action="store_true",
                       help="no TLS although some hosts are not loopback (shares cross the network in the clear)")
    serve.add_argument("--max-batch", type=int, default=16, help="queries arriving together run as one batch")
    serve.add_argument("--max-rows", type=int, default=256,
                       help="most inputs in one batch; a single query with more is refused (default 256)")
    serve.add_argument("--max-frame-bytes", type=int, default=DEFAULT_MAX_FRAME,
                       help=f"largest message a party accepts (default {DEFAULT_MAX_FRAME}); with --manual, "
                            "start the workers with the same --max-frame-bytes")
    serve.set_defaults(fn=_serve)

    query = sub.add_parser("query", help="query a served model with images; only this process sees the result")
    query.add_argument("images", nargs="*", help=".png or .npy images (MNIST style: white digit on black)")
    query.add_argument("--sample", type=int, action="append", help="query shipped MNIST test image K (repeatable)")
    query.add_argument("--hosts", default=hosts_default, help="host:port of P0,P1,P2")
    query.add_argument("--tls-dir", help="ca.pem and this client's client.pem/.key (pysmpc certs)")
    query.add_argument("--allow-cleartext", action="store_true",
                       help="no TLS although some hosts are not loopback (the input's shares cross the network "
                            "in the clear)")
    query.add_argument("--reveal", choices=("logits", "argmax"), default="logits")
    query.add_argument("--classes", type=int, default=10, help="size of the model's output")
    query.add_argument("--show-logits", action="store_true")
    query.add_argument("--timeout", type=float, default=60.0)
    query.set_defaults(fn=_query)

    fl = sub.add_parser("fl-demo", help="federated training of the CNN across data owners with secure aggregation")
    fl.add_argument("--owners", type=int, default=3, help="data owners (non-IID split of MNIST)")
    fl.add_argument("--rounds", type=int, default=10)
    fl.add_argument("--epsilon", type=float, help="train with DP-SGD to this epsilon (needs pysmpc[dp])")
    fl.add_argument("--delta", type=float, default=1e-5)
    fl.add_argument("--data", help="directory of the MNIST IDX files (default: $PYSMPC_MNIST_DIR, ./mnist, ...)")
    fl.add_argument("--in-process", action="store_true",
                    help="run the workers as threads and the owners as objects of this process (tests); by "
                         "default the workers are three processes over TCP and each owner is a process of its own")
    fl.add_argument("--hosts", default="localhost:4000,localhost:4001,localhost:4002",
                    help="host:port of P0,P1,P2 for the workers this command starts")
    fl.add_argument("--tls-dir", help="certificates from `pysmpc certs DIR --owners owner-0,owner-1,...`: the "
                                     "workers, the aggregator (client) and each owner (owner-K) use TLS")
    fl.add_argument("--local-epochs", type=float, default=1.0, help="FedAvg: local epochs per round")
    fl.add_argument("--clip", type=float, default=1.0, help="DP: per-example clipping norm C")
    fl.add_argument("--lot-size", type=int, default=2000, help="DP: expected examples per step over all owners")
    fl.add_argument("--dp-lr", type=float, default=2.0, help="DP: learning rate (momentum 0.9) on the noisy mean")
    fl.add_argument("--dropout", type=float, default=0.0, help="probability that an owner misses a round")
    fl.add_argument("--train-subset", type=int, help="use the first N training images")
    fl.add_argument("--test-subset", type=int, help="use the first N test images")
    fl.add_argument("--seed", type=int, default=0, help="data split and initialisation (DP noise is never seeded)")
    fl.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    fl.set_defaults(fn=_fl_demo)

    owner = sub.add_parser("fl-owner", help="a data owner: share an update (.npz) straight to P0 and P1 for a round")
    owner.add_argument("update", help=".npz file of the update's arrays, in the round's order (numpy.savez)")
    owner.add_argument("--round", required=True, help="the round id the aggregator opened")
    owner.add_argument("--name", required=True, help="this owner's name (with TLS: its certificate owner-NAME.pem)")
    owner.add_argument("--hosts", default="localhost:4000,localhost:4001,localhost:4002",
                       help="host:port of P0,P1,P2 (the update goes to P0 and P1 only)")
    owner.add_argument("--tls-dir", help="ca.pem and this owner's owner-NAME.pem/.key (pysmpc certs --owners NAME)")
    owner.add_argument("--allow-cleartext", action="store_true",
                       help="no TLS although some hosts are not loopback (the shares cross the network in the clear)")
    owner.add_argument("--min-owners", type=int, default=2,
                       help="refuse a round that would reveal sums of fewer owners than this")
    owner.add_argument("--min-noise-multiplier", type=float,
                       help="refuse a round without DP noise of at least this multiplier")
    owner.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for a worker")
    owner.set_defaults(fn=_fl_owner)

    bench = sub.add_parser("bench", help="latency, throughput, traffic and rounds of private inference")
    bench.add_argument("--model", help="a model file instead of the shipped CNN")
    bench.add_argument("--batches", default="1,64,256", help="comma-separated batch sizes (default 1,64,256)")
    bench.add_argument("--repeats", type=int, default=3, help="timed runs per point (median reported)")
    bench.add_argument("--no-tcp", action="store_true", help="skip the TCP cluster")
    bench.add_argument("--json", help="also write the rows to this JSON file")
    bench.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    bench.set_defaults(fn=_bench)

    certs = sub.add_parser("certs", help="make a CA and mutual-TLS certificates for P0, P1, P2 and the client",
                           description="Write ca.pem/ca.key and p0, p1, p2, client .pem/.key into DIRECTORY "
                                       "and print which files go to which machine.")
    certs.add_argument("directory", help="where to write them (becomes the --tls-dir of the other commands)")
    certs.add_argument("--hosts", help="host[:port] of P0,P1,P2: each goes into that party's certificate "
                                       "(subject alternative name); the same --hosts as worker and serve")
    certs.add_argument("--owners", metavar="NAMES",
                       help="comma-separated data owners to certify too (owner-NAME.pem/.key, common name owner:NAME)")
    certs.add_argument("--san", action="append", metavar="NAME",
                       help="another host name or IP for every certificate (repeatable)")
    certs.add_argument("--days", type=int, default=825, help="validity in days (default 825)")
    certs.add_argument("--force", action="store_true",
                       help="replace a CA and certificates already in DIRECTORY (the old ones stop working)")
    certs.set_defaults(fn=_certs)

    worker = sub.add_parser("worker", help="start one party of a TCP cluster (see --help of the worker)",
                            add_help=False)
    worker.add_argument("worker_args", nargs=argparse.REMAINDER)
    worker.set_defaults(fn=_worker)
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["worker"]:
        # argparse.REMAINDER does not take arguments that start with "-" (--party ...): hand them over whole.
        from pysmpc.runtime.worker import main as worker_main

        return worker_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (ValueError, OSError, RuntimeError) as exc:
        print(f"pysmpc {args.command}: error: {exc}", file=sys.stderr)
        return 2
