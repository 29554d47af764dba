"""A data owner: shares its update straight to P0 and P1, from its own process, with its own PRG.

The aggregator never handles an owner's update, in any form: the owner
encodes it, splits it into two additive shares with a PRG seeded by a fresh
secret only it knows, and sends one share to P0 and the other to P1 over
its own connections (mutual TLS with its own certificate "owner:NAME" when
the cluster uses TLS). Before sending, it reads the round's rules from both
workers (shapes, fixed point, min_owners, DP series) and refuses to send if
they disagree or fall short of what it requires.

    owner = Owner(["10.0.0.1:4000", "10.0.0.2:4001", "10.0.0.3:4002"], "hospital-a", tls_dir="certs")
    owner.submit(round_id, [kernel_delta, bias_delta])

In-process (tests, simulations), `Owner(local_cluster, name)` hands its
shares to the in-process workers' round books directly; it still never
goes through the aggregator's endpoint.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field

import numpy as np

from pysmpc.parties.addresses import check_cleartext, parse_hosts
from pysmpc.parties.channel import ChannelError
from pysmpc.parties.party import CLIENT, P0, P1
from pysmpc.parties.socket import SocketChannel, connect_peer
from pysmpc.parties.streams import TlsConfig
from pysmpc.runtime.certs import owner_stem
from pysmpc.runtime.rounds import MIN_OWNERS_FLOOR, check_owner_name
from pysmpc.sharing.fixedpoint import FixedPoint
from pysmpc.sharing.prg import PRG
from pysmpc.sharing.shares import share

__all__ = ["Owner", "SubmissionError", "Receipt"]


class SubmissionError(RuntimeError):
    """The owner's update was not taken (the round is closed, the rules are not acceptable, a worker refused)."""


@dataclass
class Receipt:
    """What an owner learns from a submission: the round's rules and the bytes it sent to each worker."""

    round_id: str
    rules: dict
    bytes_sent: dict = field(default_factory=dict)  # {0: bytes to P0, 1: bytes to P1}


class Owner:
    """One data owner: `submit(round_id, update)` shares an update to the cluster's P0 and P1.

    Args:
        cluster: the workers' hosts ("h0:p0,h1:p1,h2:p2" or a list; the
            owner connects to P0 and P1 only), or an in-process LocalCluster.
        name: this owner's name; the workers count each name once per
            round. With TLS it must be the name in the owner's certificate
            (`pysmpc certs DIR --owners NAME`, files owner-NAME.pem/.key in
            `tls_dir` with ca.pem).
        tls_dir: the owner's TLS directory; needed off loopback.
        min_owners: the least `min_owners` a round may have for this owner
            to take part (never below 2).
        require_dp: if given, a dict of DP parameters (noise_multiplier,
            clip_norm, sample_rate, epsilon_budget, delta; any subset): the
            owner takes part only in rounds of a DP series with at least that
            noise multiplier and at most that clip norm, sample rate, budget
            and delta.
        int_bits: integer bits of the fixed-point encoding (values beyond
            2^int_bits raise OverflowError before anything is sent).
    """

    def __init__(self, cluster, name: str, *, tls_dir=None, timeout: float = 30.0, min_owners: int = MIN_OWNERS_FLOOR,
                 require_dp: dict | None = None, int_bits: int = 15, allow_cleartext: bool = False):
        self.name = check_owner_name(name)
        self.timeout = float(timeout)
        self.min_owners = max(MIN_OWNERS_FLOOR, int(min_owners))
        self.require_dp = dict(require_dp) if require_dp else None
        self.int_bits = int(int_bits)
        self._prg = PRG.fresh()  # this owner's own (reseeded in a forked child): no other endpoint knows its seed
        self._books: dict = {}   # in-process: P0's and P1's round books
        self.hosts: list = []    # over TCP: the workers' (host, port)
        if hasattr(cluster, "round_books"):
            self._books = cluster.round_books()
        else:
            self.hosts = parse_hosts(cluster)
            check_cleartext(self.hosts, tls_dir, f"data owner {name}", allow_cleartext=allow_cleartext)
        self._tls = None if tls_dir is None else TlsConfig(tls_dir, CLIENT, stem=owner_stem(self.name))

    def submit(self, round_id: str, update) -> Receipt:
        """Share `update` (a list of float arrays, the round's shapes) to P0 and P1 for round `round_id`.

        1. Read the round's rules from P0 and P1; refuse (SubmissionError,
           nothing sent) if they differ, do not fit the update, or fall short
           of this owner's min_owners / require_dp.
        2. Encode in the round's fixed point and split into two uniform
           shares with this owner's PRG: local.
        3. Send one share to P0 and one to P1 (8 bytes per element each) and
           wait for both to confirm; a worker that refuses is reported.
        """
        arrays = [np.asarray(a, dtype=np.float64) for a in update]
        for k, a in enumerate(arrays):
            if not np.all(np.isfinite(a)):
                raise ValueError(f"owner {self.name}: array {k} of its update contains NaN or infinity")
        if self._books:
            return self._submit_in_process(round_id, arrays)
        return self._submit_over_tcp(round_id, arrays)

    # -- the steps ----------------------------------------------------------------------------
    def _check_rules(self, round_id: str, rules_0, rules_1, arrays: list) -> dict:
        if not isinstance(rules_0, dict) or not isinstance(rules_1, dict):
            raise SubmissionError(f"owner {self.name}: a worker did not state the rules of round {round_id!r}; "
                                  "nothing sent")
        if json.dumps(rules_0, sort_keys=True) != json.dumps(rules_1, sort_keys=True):
            raise SubmissionError(f"owner {self.name}: P0 and P1 state different rules for round {round_id!r} "
                                  f"({rules_0} vs {rules_1}); nothing sent")
        rules = rules_0
        shapes = [list(a.shape) for a in arrays]
        if shapes != rules["shapes"]:
            raise SubmissionError(f"owner {self.name}: round {round_id!r} takes arrays of shapes {rules['shapes']}, "
                                  f"the update has {shapes}")
        if rules["min_owners"] < self.min_owners:
            raise SubmissionError(f"owner {self.name}: round {round_id!r} reveals sums of {rules['min_owners']} owners; "
                                  f"this owner requires at least {self.min_owners}; nothing sent")
        if self.require_dp is not None:
            dp = rules.get("dp")
            if dp is None:
                raise SubmissionError(f"owner {self.name}: round {round_id!r} adds no DP noise and this owner "
                                      "requires DP; nothing sent")
            for key, want in self.require_dp.items():
                at_least = key == "noise_multiplier"
                if key not in dp or (dp[key] < want if at_least else dp[key] > want):
                    raise SubmissionError(f"owner {self.name}: round {round_id!r} has DP {key} {dp.get(key)}, this "
                                          f"owner requires {'>=' if at_least else '<='} {want}; nothing sent")
        return rules

    def _shares(self, rules: dict, arrays: list) -> tuple[np.ndarray, np.ndarray]:
        fmt = FixedPoint(frac_bits=rules["frac_bits"], int_bits=self.int_bits)
        vector = np.concatenate([a.reshape(-1) for a in arrays])
        try:
            encoded = fmt.encode(vector)
        except OverflowError as exc:
            raise OverflowError(f"owner {self.name}: {exc}") from None
        return share(encoded, self._prg)

    def _submit_in_process(self, round_id: str, arrays: list) -> Receipt:
        try:
            rules = self._check_rules(round_id, self._books[P0].rules(round_id), self._books[P1].rules(round_id),
                                      arrays)
        except ValueError as exc:
            raise SubmissionError(f"owner {self.name}: {exc}") from None
        share_0, share_1 = self._shares(rules, arrays)
        receipt = Receipt(round_id, rules)
        for i, part in ((P0, share_0), (P1, share_1)):
            try:
                self._books[i].submit(round_id, self.name, part)
            except ValueError as exc:
                raise SubmissionError(f"owner {self.name}: P{i} refused the share: {exc}") from None
            receipt.bytes_sent[i] = int(part.nbytes)
        return receipt

    def _submit_over_tcp(self, round_id: str, arrays: list) -> Receipt:
        session = secrets.token_hex(16)
        channel = SocketChannel(CLIENT, self.timeout, session=session)
        replies: dict[int, dict] = {}
        try:
            for i in (P0, P1):
                replies[i] = {}
                try:
                    stream = connect_peer(self.hosts[i], CLIENT, i, session=session, tls=self._tls,
                                          timeout=self.timeout, extra={"submit": {"round": round_id,
                                                                                  "owner": self.name}},
                                          reply=replies[i])
                except ChannelError as exc:
                    raise SubmissionError(f"owner {self.name}: P{i} at {self.hosts[i][0]}:{self.hosts[i][1]} did not "
                                          f"take the submission: {exc}") from None
                channel.attach(i, stream)
            rules = self._check_rules(round_id, replies[P0].get("rules"), replies[P1].get("rules"), arrays)
            share_0, share_1 = self._shares(rules, arrays)
            channel.send(P0, share_0, tag="fl:share")
            channel.send(P1, share_1, tag="fl:share")
            for i in (P0, P1):
                tag, payload = channel.recv_control(i, timeout=self.timeout)
                if tag != "fl:ok":
                    why = bytes(payload).decode(errors="replace") if isinstance(payload, bytes) else tag
                    raise SubmissionError(f"owner {self.name}: P{i} refused the share of round {round_id!r}: {why}")
            return Receipt(round_id, rules, {P0: int(share_0.nbytes), P1: int(share_1.nbytes)})
        except ChannelError as exc:
            raise SubmissionError(f"owner {self.name}: the submission to round {round_id!r} failed: {exc}") from None
        finally:
            channel.close()
