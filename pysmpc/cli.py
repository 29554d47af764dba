"""The `pysmpc` command line: demo, inspect, serve, query, worker, certs, fl-demo, bench."""

from __future__ import annotations

import os
import select
import sys
import time

import numpy as np

__all__ = ["main"]

# Library messages name the Python keyword a caller would change; a command-line
# user changes a flag. Each pair: the library's words -> the command line's.
_FLAG_HINTS = (
    ("pass tls_dir=DIR (--tls-dir DIR)", "pass --tls-dir DIR"),
    ("force cleartext with allow_cleartext=True (--allow-cleartext)", "force cleartext with --allow-cleartext"),
    ("(forced with allow_cleartext)", "(forced with --allow-cleartext)"),
    ("pass tls_dir / --tls-dir", "pass --tls-dir"),
    ("(max_frame_bytes)", "(--max-frame-bytes)"),
    ("(max_rows)", "(pysmpc serve --max-rows)"),
    ("pass other hosts=,", "pass other --hosts,"),
)


def _with_flags(message: str) -> str:
    """Return a library error message with its Python keyword hints replaced by the command-line flags."""
    for python_words, flag_words in _FLAG_HINTS:
        message = message.replace(python_words, flag_words)
    return message


def _print_above_bars(line: str) -> None:
    """Print a line of results on stdout without tearing a progress bar on the terminal (tqdm.write).

    tqdm.write clears every bar drawn on stdout or stderr, prints the line and
    draws the bars again below it; with no bar it is a plain print.
    """
    from tqdm import tqdm

    tqdm.write(line, file=sys.stdout)
    sys.stdout.flush()


def _warm_kernels() -> None:
    """Load (on the first run: compile) the Numba kernels now, so that no timed prediction pays for it.

    Compiled kernels go to Numba's cache, which TCP workers started later
    read as well.
    """
    from pysmpc.kernels.warm import warm_up

    warm_up(on_compile=lambda: print("compiling kernels, first run only (up to a minute) ...", file=sys.stderr,
                                     flush=True))


def _demo(args) -> int:
    from pysmpc import LocalCluster, load_model
    from pysmpc.models import load_samples, shipped_model_path
    from pysmpc.parties.channel import is_offline_tag
    from pysmpc.serve.benchmark import traffic_per_image

    model = load_model(args.model or shipped_model_path())
    images, labels = load_samples()
    if args.images > len(images):
        raise ValueError(f"--images {args.images}: {len(images)} MNIST test images ship with pysmpc, "
                         f"so give 1 to {len(images)}")
    count = args.images
    _warm_kernels()
    if args.tcp:
        from pysmpc.runtime.tcp import TcpCluster

        # Free ports: the demo's own workers need no fixed address, and another run may hold 4000-4002.
        cluster = TcpCluster(spawn=True, ephemeral_ports=True)
        where = "three worker processes over TCP"
    else:
        cluster = LocalCluster()
        where = "three in-process parties"
    print(f"Private predictions of {count} MNIST test image{'s' if count > 1 else ''} with {where}.", flush=True)
    with cluster:
        shared = model.share(cluster)
        # One untimed prediction first: a process's first one also fills caches (the
        # comparison's forms, buffers, lazy imports) and took 4x a later one.
        shared.prepare(1)
        shared.predict(images[:1], reveal=args.reveal)
        cluster.reset_stats()
        online = offline = 0.0
        correct = 0
        for i in _progress(range(count), args.progress, "image"):
            # As a server does while it waits: the dealer's material first (offline;
            # the secure argmax's is still dealt during the query).
            offline += shared.prepare(1, reveal=args.reveal)["seconds"]
            start = time.perf_counter()
            answer = shared.predict(images[i : i + 1], reveal=args.reveal)
            predicted = int(answer.reshape(-1).argmax() if args.reveal == "logits" else answer[0])
            online += time.perf_counter() - start
            correct += predicted == labels[i]
            _print_above_bars(f"Actual: {labels[i]}, predicted: {predicted}")
        stats = cluster.stats()
    traffic = traffic_per_image(stats, count)
    rounds = sum(s["rounds"] for t, s in stats["P0"].items() if not is_offline_tag(t) and t not in ("input",))
    made_ahead = f" (its material made ahead in {1000 * offline / count:.1f} ms)" if offline else ""
    print(f"{correct}/{count} correct; {1000 * online / count:.1f} ms per image online{made_ahead}; "
          f"online traffic {traffic['online_bytes_per_image'] / 1e3:.1f} kB per image (P0 + P1); "
          f"dealer material {traffic['dealer_bytes_per_image'] / 1e3:.1f} kB per image; "
          f"{rounds / count:.0f} rounds per image")
    return 0


def _bound_relus(model, args) -> None:
    """--relu-bounds: the model's relu bounds from sample inputs (Model.bound_relus), said on stderr."""
    if not getattr(args, "relu_bounds", None):
        return
    if args.relu != "fss":
        raise ValueError("--relu-bounds needs --relu fss (the bit-plane relu takes any value below 2^63)")
    if args.relu_bounds == "shipped":
        from pysmpc.models.samples import load_samples

        samples = load_samples()[0]
    else:
        try:
            samples = np.load(args.relu_bounds, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ValueError(f"--relu-bounds {args.relu_bounds}: cannot read samples as a .npy array ({exc})") from None
    bounds = model.bound_relus(samples)
    print("relu bounds (bits): " + ", ".join(f"{name} {bits}" for name, bits in bounds.items()), file=sys.stderr)


def _inspect(args) -> int:
    from pysmpc import load_model

    if args.plot:
        from pysmpc.serve.plots import require_matplotlib

        require_matplotlib()  # before the model is read, not after
    model = load_model(args.model, frac_bits=args.frac_bits, relu_protocol=args.relu)
    _bound_relus(model, args)
    print(model.summary())
    costs = model.cost(args.batch)
    print(f"\nsecure cost per inference of a batch of {args.batch} (online, each computing party; "
          f"relu protocol {args.relu}):")
    print(f"{'layer':<16}{'rounds':>8}{'bytes sent':>14}{'dealer bytes':>14}")
    for name, c in costs:
        print(f"{name:<16}{c.rounds:>8}{c.bytes_sent:>14,}{c.dealer_bytes:>14,}")
    total_rounds = sum(c.rounds for _, c in costs)
    total_bytes = sum(c.bytes_sent for _, c in costs)
    print(f"{'total':<16}{total_rounds:>8}{total_bytes:>14,}{sum(c.dealer_bytes for _, c in costs):>14,}")
    if args.calibrate:
        from pysmpc.graph.calibrate import calibration_report

        print()
        print(calibration_report(model.graph, args.calibrate, args.frac_bits, relu_protocol=args.relu))
    if args.plot:
        _plot_layers(model, args)
    return 0


def _plot_layers(model, args) -> None:
    """Measure each layer's online cost in a private run and draw it (inspect --plot)."""
    from pysmpc.serve.benchmark import measure_layers
    from pysmpc.serve.plots import plot_layers

    _warm_kernels()
    print(f"\nmeasuring: {args.repeats} private predictions of a batch of {args.batch} in-process, each on "
          "material made ahead ...", flush=True)
    layers = measure_layers(model, args.batch, repeats=args.repeats)
    name = os.path.basename(args.model)
    plot_layers(layers, args.plot, f"{name}: online cost per layer of a private prediction (batch {args.batch}; "
                                   "in-process, material made ahead)")
    total_ms = 1000 * sum(layer["seconds"] for layer in layers)
    print(f"online: {sum(layer['rounds'] for layer in layers)} rounds, "
          f"{sum(layer['bytes_sent'] for layer in layers):,} bytes sent by each computing party, "
          f"{total_ms:.1f} ms (median per layer); wrote {args.plot}")


def _serve(args) -> int:
    import logging
    import signal

    from pysmpc import Cluster, Worker, load_model

    # One line per query (time, rows, reveal mode, online ms) on stderr.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    serve_log = logging.getLogger("pysmpc.serve")
    serve_log.addHandler(handler)
    serve_log.setLevel(logging.INFO)
    serve_log.propagate = False

    def terminate(signum, frame):  # SIGTERM before or after serving: stop as Ctrl-C does (serve() handles its own)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    model = load_model(args.model, input_range=args.input_range, relu_protocol=args.relu)
    _bound_relus(model, args)
    if model.input_range is None:
        print(f"note: {args.model} records no input range, so clients cannot check their inputs' scale: pass "
              "--input-range LOW,HIGH (e.g. 0,1)", file=sys.stderr, flush=True)
    hosts = args.hosts.split(",")
    cluster = Cluster(*(Worker(h, auto_managed=not args.manual) for h in hosts), tls_dir=args.tls_dir,
                      allow_cleartext=args.allow_cleartext, max_frame_bytes=args.max_frame_bytes)
    how_long = f"for {args.requests} requests" if args.requests else "until Ctrl-C or SIGTERM"
    try:
        print(f"starting the cluster on {', '.join(hosts)}" + (" (workers started by hand)" if args.manual else ""),
              flush=True)
        with cluster:
            model.share(cluster)
            print(f"serving {args.model} (input {model.input_shape}, output {model.output_shape}) {how_long}"
                  + (", labels only" if args.reveal == "argmax" else "")
                  + (", one-round relu (fss)" if args.relu == "fss" else ""), flush=True)
            start = time.perf_counter()
            served = model.serve(num_requests=args.requests, max_batch=args.max_batch, max_rows=args.max_rows,
                                 reveal=args.reveal)
            elapsed = time.perf_counter() - start
            model.stop_sharing()
    except KeyboardInterrupt:
        print("interrupted: the workers were stopped", flush=True)
        return 130
    last = cluster.last_serve
    stopped = f"stopped by {last['stopped']}: " if last["stopped"] in ("SIGINT", "SIGTERM") else ""
    print(f"{stopped}served {served} requests ({last['failed']} refused) in {elapsed:.1f} s", flush=True)
    return 0


def _query(args) -> int:
    import logging

    from pysmpc import Client, Cluster, Worker
    from pysmpc.models import load_samples
    from pysmpc.serve.images import load_image

    # The client's notes (an image scaled to the model's range, a worker waited for) as plain lines.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("pysmpc query: %(message)s"))
    for name in ("pysmpc.client", "pysmpc.cluster"):
        logging.getLogger(name).addHandler(handler)
        logging.getLogger(name).propagate = False
    cluster = Cluster(*(Worker(h, auto_managed=False) for h in args.hosts.split(",")), tls_dir=args.tls_dir,
                      allow_cleartext=args.allow_cleartext)
    queries = [(path, load_image(path), None) for path in args.images]
    if args.sample:
        images, labels = load_samples()
        for k in args.sample:
            if not 0 <= k < len(images):
                raise ValueError(f"--sample {k}: the shipped MNIST test images are numbered 0 to {len(images) - 1}")
        queries += [(f"sample {k}", images[k], int(labels[k])) for k in args.sample]
    if not queries:
        raise ValueError("nothing to query: give image files (PNG, JPEG, ... or .npy) or --sample K")
    deadline = time.monotonic() + args.wait
    served = cluster.describe_model(wait=args.wait)
    while served is None and args.classes is None and time.monotonic() < deadline:
        time.sleep(0.2)  # the workers run; their owner has not shared the model yet
        served = cluster.describe_model(wait=max(0.0, deadline - time.monotonic()))
    if args.classes is not None:
        output = (1, args.classes)
    elif served is not None:
        output = (1, *served["output_shape"])
    else:
        raise ValueError("the workers serve no model yet, so its output size is unknown: pass --classes N, or "
                         "--wait SECONDS for the model to be served")
    client = Client(timeout=args.timeout).connect_to_model(batch_input_shape=(1, *queries[0][1].shape),
                                                           batch_output_shape=output, cluster=cluster)
    for name, image, label in queries:
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


def _train_demo(args) -> int:
    from pysmpc.fl.data import find_mnist
    from pysmpc.serve.train_demo import TrainDemoConfig, run_train_demo

    cfg = TrainDemoConfig(epochs=args.epochs, owners=args.owners, batch_size=args.batch_size, lr=args.lr,
                          momentum=args.momentum, data_dir=str(find_mnist(args.data)),
                          train_subset=args.train_subset, test_subset=args.test_subset, max_steps=args.max_steps,
                          seed=args.seed, progress=args.progress, report=args.report)
    if args.tcp:
        from pysmpc.runtime.tcp import TcpCluster

        cluster = TcpCluster(spawn=True, ephemeral_ports=True, timeout=120.0)
        where = "three worker processes over TCP on loopback; each owner connects to P0 and P1 itself"
    else:
        from pysmpc import LocalCluster

        cluster, where = LocalCluster(timeout=120.0), "three in-process parties"
    print(f"Training the seed CNN from a shared random init on MNIST shared by {cfg.owners} owners "
          f"({where}; batch {cfg.batch_size}, lr {cfg.lr}, momentum {cfg.momentum}). "
          "After each epoch the still-shared weights label the test set privately; only the labels reach the "
          "model owner (this process).", flush=True)
    _warm_kernels()
    with cluster:
        result = run_train_demo(cluster, cfg, log=_print_above_bars)
    print(f"accuracy: {result.accuracy:.4f}")
    print(f"images/s: {result.images_per_second:.1f}")
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
    from pysmpc.serve.benchmark import (
        TORCH_BASELINE,
        measure_inference,
        speed_ratios,
        torch_available,
    )

    if args.plot:
        from pysmpc.serve.plots import require_matplotlib

        require_matplotlib()  # before minutes of measuring, not after
    if args.network:
        return _bench_network(args)
    model = load_model(args.model or shipped_model_path(), relu_protocol=args.relu)
    _bound_relus(model, args)
    images, _ = load_samples()
    if images.shape[1:] != tuple(model.input_shape):
        # Another model's input: uniform pixels in [0, 1] of its shape (the timings do not depend on them).
        images = np.random.default_rng(0).random((16, *model.input_shape))
        print(f"inputs: 16 uniform random inputs of shape {tuple(model.input_shape)} "
              "(the shipped samples are 28x28 MNIST digits)")
    with_torch = torch_available()
    clusters = (["plaintext"] + (["pytorch"] if with_torch else []) + ["in-process"]
                + ([] if args.no_tcp else ["tcp"]))
    _warm_kernels()
    bar = None
    if args.progress:
        from tqdm import tqdm

        bar = tqdm(total=len(args.batches) * len(clusters), unit="run", file=sys.stderr, leave=False)
    rows = measure_inference(model, images, batches=args.batches, clusters=clusters, repeats=args.repeats,
                             progress=bar)
    for row in rows:
        if row["system"].startswith("pysmpc"):
            row["relu_protocol"] = args.relu + ("-bounded" if args.relu_bounds else "")
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
    if with_torch and not any(r["system"] == TORCH_BASELINE for r in rows):
        print("no PyTorch baseline: pysmpc.graph.to_torch has no module for a layer of this graph")
    elif with_torch:
        print(f"{TORCH_BASELINE}: the same weights as a float32 PyTorch module on one thread (pysmpc.graph.to_torch)")
    else:
        print("no PyTorch baseline: torch is not installed (pip install torch)")
    print("\nprivate latency against plaintext, same batch (10x: ten times as long):")
    for ratio in speed_ratios(rows):
        print(f"  {ratio['system']:<26}batch {ratio['batch']:>4}: {ratio['latency_ratio']:>7.1f}x "
              f"{ratio['baseline']}")
    workers = [r["worker_peak_rss_mb"] for r in rows if "worker_peak_rss_mb" in r]
    if workers:
        print(f"largest worker peak memory (TCP): {max(workers):.0f} MB")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
        print(f"wrote {args.json}")
    if args.plot:
        from pysmpc.serve.plots import plot_bench

        plot_bench(rows, args.plot, f"{os.path.basename(args.model or shipped_model_path())}: private inference "
                                    f"against plaintext (online; median of {args.repeats} runs per point)")
        print(f"wrote {args.plot}")
    return 0


def _bench_network(args) -> int:
    """`pysmpc bench --network lan|wan`: bench/network.py's three-host topology; rows in `pysmpc bench`'s keys."""
    import json
    import shutil
    import subprocess
    import tempfile
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "bench" / "network.py"
    if args.model:
        raise ValueError("--network measures the shipped CNN only (bench/network.py); drop --model")
    if not script.is_file():
        raise ValueError(f"--network runs bench/network.py from a source checkout, and {script} does not exist "
                         "(an installed pysmpc has no bench/): run it from a clone of the repository")
    if sys.platform != "linux" or os.geteuid() != 0:
        raise ValueError("--network builds network namespaces: it needs Linux and root (sudo pysmpc bench --network ...)")
    if shutil.which("ip") is None:
        raise ValueError("--network needs iproute2's `ip`: apt-get install iproute2")
    relu = args.relu
    if args.relu_bounds:
        if args.relu != "fss" or args.relu_bounds != "shipped":
            raise ValueError("with --network, --relu-bounds takes 'shipped' (the shipped CNN's own samples) and "
                             "needs --relu fss")
        relu = "fss-bounded"
    with tempfile.TemporaryDirectory(prefix="pysmpc-bench-net-") as tmp:
        out = Path(tmp) / "network.json"
        done = subprocess.run([sys.executable, str(script), "--profiles", ",".join(args.network),
                               "--batches", ",".join(map(str, args.batches)), "--repeats", str(args.repeats),
                               "--relu", relu, "--json", str(out)])
        if done.returncode != 0:
            print(f"bench/network.py failed (exit {done.returncode})", file=sys.stderr)
            return done.returncode
        measured = json.loads(out.read_text())
    rows = network_rows(measured, args.network)
    print(f"\n{'system':<16}{'relu':>10}{'batch':>6}{'latency ms':>12}{'images/s':>10}{'online kB/img':>15}"
          f"{'rounds':>8}{'offline ms':>12}{'dealer kB/img':>15}{'model ms':>10}")
    for r in rows:
        print(f"{r['system']:<16}{r['relu_protocol']:>10}{r['batch']:>6}{r['latency_ms']:>12.1f}"
              f"{r['images_per_s']:>10.1f}{r['online_bytes_per_image'] / 1e3:>15.1f}{r['rounds']:>8}"
              f"{r['offline_ms']:>12.0f}{r['dealer_bytes_per_image'] / 1e3:>15.1f}"
              f"{r['analytic_model']['one_way_ms']:>10.1f}")
    print("model: compute (unshaped run) + rounds x one-way delay + RTT (the call) + bytes / rate (bench/NETWORK.md)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
        print(f"wrote {args.json}")
    return 0


def network_rows(measured: dict, profiles) -> list[dict]:
    """bench/network.py's JSON as `pysmpc bench` rows (system 'pysmpc lan'/'pysmpc wan'), with the link detail."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "network_measure", Path(__file__).resolve().parent.parent / "bench" / "network_measure.py")
    network_measure = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(network_measure)
    compute = {(r.get("relu_protocol", "bitplane"), r["batch"]): r for r in measured["rows"]
               if r["profile"] == "unshaped"}
    rows = []
    for r in measured["rows"]:
        if r["profile"] not in profiles:
            continue
        relu = r.get("relu_protocol", "bitplane")
        delay, rate = measured["profiles"][r["profile"]]
        rows.append({"system": f"pysmpc {r['profile']}", "batch": r["batch"], "latency_ms": r["latency_ms"],
                     "images_per_s": r["images_per_s"], "offline_ms": r["offline_ms"],
                     "peak_rss_mb": r.get("peak_rss_mb"), "online_bytes_per_image": r["online_bytes_per_image"],
                     "dealer_bytes_per_image": r["dealer_bytes_per_image"], "rounds": r["worker_rounds"],
                     "worker_peak_rss_mb": r.get("worker_peak_rss_mb"), "relu_protocol": relu,
                     "link_bytes": r["link_bytes"], "offline_link_bytes": r["offline_link_bytes"],
                     "compute_ms": compute[(relu, r["batch"])]["latency_ms"],
                     "analytic_model": network_measure.predict_latency(r, compute[(relu, r["batch"])], delay, rate)})
    return rows


def _certs(args) -> int:
    from pysmpc.parties.addresses import parse_hosts
    from pysmpc.parties.party import CLIENT, DEALER, P0, P1
    from pysmpc.runtime.certs import (
        LOOPBACK_NAMES,
        cert_host,
        endpoint_files,
        fingerprint,
        make_cluster_certs,
    )

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


COMMANDS = {"demo": _demo, "inspect": _inspect, "serve": _serve, "query": _query, "fl-demo": _fl_demo,
            "fl-owner": _fl_owner, "bench": _bench, "certs": _certs,
            "train-demo": _train_demo}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = "pysmpc"
    try:
        if argv[:1] == ["worker"]:
            # The worker has its own parser (python -m pysmpc.runtime.worker is the same program).
            from pysmpc.runtime.worker import main as worker_main

            return worker_main(argv[1:], prog="pysmpc worker")
        from pysmpc.cli_args import build_parser

        args = build_parser().parse_args(argv)
        command = f"pysmpc {args.command}"
        status = COMMANDS[args.command](args)
        sys.stdout.flush()  # here, where a closed pipe is handled, not in the interpreter's exit
        return status
    except KeyboardInterrupt:
        print(f"\n{command}: interrupted", file=sys.stderr)
        return 130  # 128 + SIGINT
    except BrokenPipeError:
        if not _stdout_closed():
            print(f"{command}: error: broken pipe (a connection closed while writing)", file=sys.stderr)
            return 2
        # The reader went away (pysmpc ... | head): stop quietly, as `cat` does. Point stdout
        # at /dev/null, or the interpreter's last flush at exit reports the broken pipe again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE: what a shell reports for a command the closed pipe stopped
    except ImportError as exc:  # an optional extra is missing: the message names it
        print(f"{command}: error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, OSError, RuntimeError) as exc:
        print(f"{command}: error: {_with_flags(str(exc))}", file=sys.stderr)
        return 2


def _stdout_closed() -> bool:
    """Whether stdout is a pipe whose reader has gone (poll reports an error on its write end)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (AttributeError, ValueError, OSError):  # no poll (Windows), or stdout is not a real file
        return True
