"""The `pysmpc` command line's arguments: the parser, its help and the types that check values.

Every option has a help text, and the help shows its default. Values are
checked as they are parsed, so a bad one is an argparse error naming the
option (`pysmpc demo: error: argument --images: ...`), never a traceback
from deep inside a command.
"""

from __future__ import annotations

import argparse
import math

__all__ = ["build_parser"]


class _HelpFormatter(argparse.HelpFormatter):
    """Help that ends each option's text with its default, unless it has none (None) or is an on/off switch."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if ("%(default)" in text or not action.option_strings or default is None or isinstance(default, bool)
                or default is argparse.SUPPRESS):
            return text
        shown = ",".join(map(str, default)) if isinstance(default, (list, tuple)) else "%(default)s"
        return f"{text} (default: {shown})"


def _number(kind, low, high=None, low_inclusive: bool = True):
    """An argparse type: a finite `kind` (int or float) from low (inclusive or not) to high (inclusive)."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {'a whole number' if kind is int else 'a number'}, "
                                             f"got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
        too_low = value < low if low_inclusive else value <= low
        if too_low or (high is not None and value > high):
            bound = f"at least {low}" if low_inclusive else f"more than {low}"
            raise argparse.ArgumentTypeError(f"must be {bound}{f' and at most {high}' if high is not None else ''}, "
                                             f"got {text}")
        return value

    return parse


def _batch_sizes(text: str) -> list[int]:
    """An argparse type: comma-separated positive batch sizes ("1,64,256")."""
    one = _number(int, 1)
    sizes = [one(part.strip()) for part in text.split(",") if part.strip()]
    if not sizes:
        raise argparse.ArgumentTypeError("give at least one batch size, e.g. 1,64,256")
    return sizes


def _network_profiles(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names or any(n not in ("lan", "wan") for n in names):
        raise argparse.ArgumentTypeError(f"expected lan, wan or lan,wan, got {text!r}")
    return names


def _add_relu_bounds(parser) -> None:
    parser.add_argument("--relu-bounds", metavar="SAMPLES.npy|shipped", default=None,
                        help="with --relu fss: measure each relu's largest input on these samples (.npy in the "
                             "model's input layout, or 'shipped': the package's MNIST digits) and promise "
                             "3 bits above it, for DCFs of fewer levels; a query beyond a bound gets a wrong relu")


def build_parser() -> argparse.ArgumentParser:
    """The pysmpc parser: args.command names the command (cli.COMMANDS runs it)."""
    from pysmpc import __version__
    from pysmpc.parties.frames import DEFAULT_MAX_FRAME, FRAME_HEADER_ROOM

    positive = _number(int, 1)
    positive_real = _number(float, 0, low_inclusive=False)
    parser = argparse.ArgumentParser(prog="pysmpc", description="Secure multi-party computation for private ML: "
                                     "three parties compute on secret shares of a model and its input.",
                                     formatter_class=_HelpFormatter)
    parser.add_argument("--version", action="version", version=f"pysmpc {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, text: str, **kwargs):
        return sub.add_parser(name, help=text, description=kwargs.pop("description", text[0].upper() + text[1:] + "."),
                              formatter_class=_HelpFormatter, **kwargs)

    demo = command("demo", "private predictions of shipped MNIST images with the shipped CNN")
    demo.add_argument("--tcp", action="store_true", help="three worker processes over TCP instead of threads")
    demo.add_argument("--images", type=positive, default=3, metavar="N",
                      help="how many of the 16 shipped MNIST test images to predict")
    demo.add_argument("--reveal", choices=("logits", "argmax"), default="logits",
                      help="reveal logits to the client, or only the label via the secure argmax")
    demo.add_argument("--model", help="a model file (.h5, .keras, .onnx) instead of the shipped CNN")
    demo.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")

    inspect = command("inspect", "layers, shapes and the secure cost of a model file")
    inspect.add_argument("model", help="a model file (.h5, .hdf5, .keras, .onnx)")
    inspect.add_argument("--batch", type=positive, default=1, metavar="N",
                         help="inputs per private prediction the cost is given for")
    inspect.add_argument("--plot", metavar="FILE.png",
                         help="also run private predictions in-process and draw each layer's online bytes, rounds "
                              "and time into this image (needs pysmpc[plot])")
    inspect.add_argument("--repeats", type=positive, default=5, metavar="N",
                         help="with --plot: timed predictions (each layer's median time is drawn)")
    inspect.add_argument("--frac-bits", type=positive, default=None, metavar="F",
                         help="the model's fixed-point fractional bits (default 16)")
    inspect.add_argument("--relu", choices=("bitplane", "fss"), default="bitplane",
                         help="relu protocol: bit-plane comparison (4 rounds) or function secret sharing "
                              "(1 round, more dealer material; docs/PROTOCOL.md)")
    _add_relu_bounds(inspect)
    inspect.add_argument("--calibrate", metavar="SAMPLES.npy",
                         help="sample inputs (.npy, in the model's input layout): report each layer's largest "
                              "magnitude against the fixed-point limits, and the F the samples allow")

    hosts_default = "localhost:4000,localhost:4001,localhost:4002"
    frame = _number(int, FRAME_HEADER_ROOM)
    serve = command("serve", "share a model to three workers and answer client queries")
    serve.add_argument("model", help="a model file (.h5, .hdf5, .keras, .onnx)")
    serve.add_argument("--requests", type=positive, default=None, metavar="N",
                       help="how many queries to answer (refused ones do not count); default: until Ctrl-C or "
                            "SIGTERM")
    serve.add_argument("--input-range", metavar="LOW,HIGH",
                       help="the input values the model was trained on, e.g. 0,1 (default: as the model file "
                            "records it); clients scale or refuse queries by it")
    serve.add_argument("--reveal", choices=("logits", "argmax"), default="logits",
                       help="the most a client may learn: logits (truncated to the model's fractional bits) or "
                            "labels only (argmax: logits queries are refused)")
    serve.add_argument("--relu", choices=("bitplane", "fss"), default="bitplane",
                       help="relu protocol: bit planes (4 rounds, little dealer material) or function secret "
                            "sharing (1 round, about 2.6 kB of dealer material per relu element): fss for "
                            "high-latency links (bench/NETWORK.md)")
    _add_relu_bounds(serve)
    serve.add_argument("--hosts", default=hosts_default, help="host:port of P0,P1,P2")
    serve.add_argument("--manual", action="store_true",
                       help="connect to workers started by hand (pysmpc worker) instead of starting them")
    serve.add_argument("--tls-dir", metavar="DIR",
                       help="cluster certificates (pysmpc certs) with ca.pem, client.pem/.key, and pN.pem/.key for "
                            "the workers it starts; needed when a host is not loopback")
    serve.add_argument("--allow-cleartext", action="store_true",
                       help="no TLS although some hosts are not loopback (shares cross the network in the clear)")
    serve.add_argument("--max-batch", type=positive, default=16, metavar="N",
                       help="queries arriving together run as one batch of at most this many queries")
    serve.add_argument("--max-rows", type=positive, default=256, metavar="N",
                       help="most inputs in one batch; a single query with more is refused")
    serve.add_argument("--max-frame-bytes", type=frame, default=DEFAULT_MAX_FRAME, metavar="BYTES",
                       help="largest message a party accepts; with --manual, start the workers with the same "
                            "--max-frame-bytes")

    query = command("query", "query a served model with images; only this process sees the result")
    query.add_argument("images", nargs="*", metavar="IMAGE",
                       help="image files: PNG, JPEG, BMP, GIF, TIFF, WebP, PGM (needs pysmpc[images]) or .npy "
                            "arrays; MNIST style: a white digit on black; uint8 pixels are scaled to the served "
                            "model's input range, other values must lie in it")
    query.add_argument("--sample", type=int, action="append", metavar="K",
                       help="query shipped MNIST test image K, 0 to 15 (repeatable)")
    query.add_argument("--hosts", default=hosts_default, help="host:port of P0,P1,P2")
    query.add_argument("--tls-dir", metavar="DIR", help="ca.pem and this client's client.pem/.key (pysmpc certs)")
    query.add_argument("--allow-cleartext", action="store_true",
                       help="no TLS although some hosts are not loopback (the input's shares cross the network "
                            "in the clear)")
    query.add_argument("--reveal", choices=("logits", "argmax"), default="logits",
                       help="what the workers send back: shares of the logits, or (secure argmax) of the label only")
    query.add_argument("--classes", type=positive, default=None, metavar="N",
                       help="size of the model's output: the number of logits (default: as the workers describe "
                            "the served model)")
    query.add_argument("--wait", type=_number(float, 0), default=0.0, metavar="SECONDS",
                       help="seconds to wait for workers that are not reachable yet (default: fail at once)")
    query.add_argument("--show-logits", action="store_true", help="with --reveal logits: print the logits too")
    query.add_argument("--timeout", type=positive_real, default=60.0, metavar="SECONDS",
                       help="give up on a query not answered within this time")

    fraction = _number(float, 0, high=1)
    fl = command("fl-demo", "federated training of the CNN across data owners with secure aggregation")
    fl.add_argument("--owners", type=positive, default=3, metavar="N", help="data owners (non-IID split of MNIST)")
    fl.add_argument("--rounds", type=positive, default=10, metavar="N", help="federated rounds")
    fl.add_argument("--epsilon", type=positive_real,
                    help="train with DP-SGD to this epsilon (needs pysmpc[dp]); without it: FedAvg, no DP")
    fl.add_argument("--delta", type=_number(float, 0, high=1, low_inclusive=False), default=1e-5,
                    help="DP: the delta of (epsilon, delta)-DP")
    fl.add_argument("--data", metavar="DIR",
                    help="directory of the MNIST IDX files (default: $PYSMPC_MNIST_DIR, ./mnist, ...)")
    fl.add_argument("--in-process", action="store_true",
                    help="run the workers as threads and the owners as objects of this process (tests); by "
                         "default the workers are three processes over TCP and each owner is a process of its own")
    fl.add_argument("--hosts", default=hosts_default, help="host:port of P0,P1,P2 for the workers this command starts")
    fl.add_argument("--tls-dir", metavar="DIR",
                    help="certificates from `pysmpc certs DIR --owners hospital-0,hospital-1,...`: the workers, "
                         "the aggregator (client) and each owner (hospital-K, one per --owners) use TLS")
    fl.add_argument("--local-epochs", type=positive_real, default=1.0,
                    help="FedAvg: local epochs per round")
    fl.add_argument("--clip", type=positive_real, default=1.0,
                    help="DP: per-example clipping norm C")
    fl.add_argument("--lot-size", type=positive, default=2000, metavar="N",
                    help="DP: expected examples per step over all owners")
    fl.add_argument("--dp-lr", type=positive_real, default=2.0,
                    help="DP: learning rate (momentum 0.9) on the noisy mean")
    fl.add_argument("--dropout", type=fraction, default=0.0, help="probability that an owner misses a round")
    fl.add_argument("--train-subset", type=positive, metavar="N", help="use the first N training images")
    fl.add_argument("--test-subset", type=positive, metavar="N", help="use the first N test images")
    fl.add_argument("--seed", type=int, default=0, help="data split and initialisation (DP noise is never seeded)")
    fl.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")

    owner = command("fl-owner", "a data owner: share an update (.npz) straight to P0 and P1 for a round")
    owner.add_argument("update", help=".npz file of the update's arrays, in the round's order (numpy.savez)")
    owner.add_argument("--round", required=True, help="the round id the aggregator opened")
    owner.add_argument("--name", required=True, help="this owner's name (with TLS: its certificate owner-NAME.pem)")
    owner.add_argument("--hosts", default=hosts_default, help="host:port of P0,P1,P2 (the update goes to P0 and P1 only)")
    owner.add_argument("--tls-dir", metavar="DIR",
                       help="ca.pem and this owner's owner-NAME.pem/.key (pysmpc certs --owners NAME)")
    owner.add_argument("--allow-cleartext", action="store_true",
                       help="no TLS although some hosts are not loopback (the shares cross the network in the clear)")
    owner.add_argument("--min-owners", type=_number(int, 2), default=2, metavar="N",
                       help="refuse a round that would reveal sums of fewer owners than this")
    owner.add_argument("--min-noise-multiplier", type=positive_real, metavar="SIGMA",
                       help="refuse a round without DP noise of at least this multiplier")
    owner.add_argument("--timeout", type=positive_real, default=30.0, metavar="SECONDS",
                       help="seconds to wait for a worker")

    train = command("train-demo", "data owners share MNIST (non-IID); the cluster trains the seed CNN on the shares")
    train.add_argument("--epochs", type=positive, default=5, help="passes over the shared training set")
    train.add_argument("--owners", type=positive, default=3, help="data owners (hospitals), each sharing its part")
    train.add_argument("--tcp", action="store_true", help="three worker processes over TCP on loopback (default: threads of this process)")
    train.add_argument("--data", metavar="DIR",
                       help="directory of the MNIST IDX files (default: $PYSMPC_MNIST_DIR, ./mnist, ...)")
    train.add_argument("--batch-size", type=positive, default=128, metavar="N", help="examples per SGD step")
    train.add_argument("--lr", type=positive_real, default=0.1, help="learning rate (public)")
    train.add_argument("--momentum", type=fraction, default=0.9, help="SGD momentum (public)")
    train.add_argument("--train-subset", type=positive, metavar="N", help="use the first N training images")
    train.add_argument("--test-subset", type=positive, metavar="N", help="use the first N test images")
    train.add_argument("--max-steps", type=positive, metavar="N", help="at most N steps per epoch")
    train.add_argument("--report", action="store_true",
                       help="reveal each example's probability of its true class to the model owner (the training "
                            "loss; docs/TRAINING.md says what it reveals)")
    train.add_argument("--seed", type=int, default=0, help="data split and batch order (the weights' init is never "
                                                            "seeded)")
    train.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")

    bench = command("bench", "latency, throughput, traffic and rounds of private inference, beside plaintext")
    bench.add_argument("--model", help="a model file instead of the shipped CNN")
    bench.add_argument("--batches", type=_batch_sizes, default=[1, 64, 256], metavar="N,N,...",
                       help="comma-separated batch sizes")
    bench.add_argument("--repeats", type=positive, default=3, metavar="N", help="timed runs per point; the median is reported")
    bench.add_argument("--no-tcp", action="store_true", help="skip the TCP cluster")
    bench.add_argument("--relu", choices=("bitplane", "fss"), default="bitplane",
                       help="relu protocol of the private runs (rows record it as relu_protocol)")
    _add_relu_bounds(bench)
    bench.add_argument("--network", type=_network_profiles, default=None, metavar="lan|wan|lan,wan",
                       help="instead: the shipped CNN with its workers on three network namespaces behind "
                            "latency/bandwidth relays (bench/network.py of a source checkout; needs root and "
                            "iproute2); rows' system is 'pysmpc lan' / 'pysmpc wan'")
    bench.add_argument("--json", metavar="FILE", help="also write the rows to this JSON file")
    bench.add_argument("--plot", metavar="FILE.png",
                       help="also draw latency and throughput against batch size into this image "
                            "(needs pysmpc[plot])")
    bench.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")

    certs = command("certs", "make a CA and mutual-TLS certificates for P0, P1, P2 and the client",
                    description="Write ca.pem/ca.key and p0, p1, p2, client .pem/.key into DIRECTORY "
                                "and print which files go to which machine.")
    certs.add_argument("directory", help="where to write them (becomes the --tls-dir of the other commands)")
    certs.add_argument("--hosts", help="host[:port] of P0,P1,P2: each goes into that party's certificate "
                                       "(subject alternative name); the same --hosts as worker and serve")
    certs.add_argument("--owners", metavar="NAMES",
                       help="comma-separated data owners to certify too (owner-NAME.pem/.key, common name owner:NAME)")
    certs.add_argument("--san", action="append", metavar="NAME",
                       help="another host name or IP for every certificate (repeatable)")
    certs.add_argument("--days", type=positive, default=825, help="validity in days")
    certs.add_argument("--force", action="store_true",
                       help="replace a CA and certificates already in DIRECTORY (the old ones stop working)")

    # Listed here for `pysmpc --help`; main() hands `pysmpc worker ...` to the worker's own parser.
    sub.add_parser("worker", help="start one party of a TCP cluster by hand (pysmpc worker --help for its options)",
                   add_help=False)
    return parser
