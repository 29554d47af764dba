"""Federated learning with secure aggregation: three hospitals train the MNIST CNN together.

Three hospitals each hold a non-IID share of MNIST (mostly a few digit
classes each) that never leaves them. Every round each trains the current
model locally and secret-shares its weight change straight to P0 and P1;
the cluster adds the shares and reveals only the mean change to the model
owner (the aggregator). With --epsilon, training is DP-SGD instead: each owner
clips per-example gradients, and P0 and P1 each add Gaussian noise to the
shared sum, so no single party can remove it.

    python examples/federated.py --data ../shared/data/mnist --rounds 10
    python examples/federated.py --data ../shared/data/mnist --rounds 10 --epsilon 3 --delta 1e-5

(`pysmpc fl-demo` is the same program with more options.)
"""

from __future__ import annotations

import argparse

import pysmpc
from pysmpc.fl import FederatedConfig, load_mnist, run_federated
from pysmpc.fl.data import find_mnist


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="directory with the MNIST IDX files")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--epsilon", type=float, help="DP-SGD to this epsilon (needs pip install 'pysmpc[dp]')")
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--tcp", action="store_true",
                        help="three worker processes over TCP, and each owner a process of its own")
    parser.add_argument("--train-subset", type=int, help="train on the first N training images (a quick run)")
    parser.add_argument("--test-subset", type=int, help="test on the first N test images")
    args = parser.parse_args()

    test = load_mnist(args.data, "test")
    config = FederatedConfig(owners=3, rounds=args.rounds, epsilon=args.epsilon, delta=args.delta,
                             train_subset=args.train_subset, test_subset=args.test_subset)
    if args.tcp:  # the owners load their own data; this process holds only the test set
        train, cluster = None, pysmpc.TcpCluster()
        config.owner_processes, config.data_dir = True, str(find_mnist(args.data))
    else:
        train, cluster = load_mnist(args.data), pysmpc.LocalCluster()
    with cluster:
        result = run_federated(cluster, config, train, test)   # one line per round: accuracy, owners, cost
    print(f"accuracy: {result.accuracy:.4f}")
    if result.epsilon is not None:
        print(f"epsilon: {result.epsilon:.3f}")


if __name__ == "__main__":
    main()
