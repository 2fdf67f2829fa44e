#!/usr/bin/env python3
"""How many refund sessions a rollout's random salt puts in the demo's canary.

`canaryctl traffic` (defaults: 10000 sessions, seed 1, mix refund=0.25,...) gives each
session one request class; the filter puts a session in the canary when
sha256(session + ":" + salt) mod 10000 < weight (the DESIGN contract, as in
tests/golden/cohort_vectors.py). For SALTS random salts (seeded, so the output
reproduces) this prints the share of refund sessions among the canary's sessions at
the demo's first stage (10%).

    python3 scripts/refund-share.py [SALTS]
"""
import hashlib
import random
import sys

MASK = (1 << 64) - 1


def mix64(x: int) -> int:
    """splitmix64, as controller/src/demo/traffic.rs."""
    x = (x + 0x9E3779B97F4A7C15) & MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK
    return x ^ (x >> 31)


def unit(x: int) -> float:
    return (x >> 11) / (1 << 53)


def main() -> None:
    salts = int(sys.argv[1]) if len(sys.argv) > 1 else 400
    sessions, seed, refund_share, weight_bp = 10000, 1, 0.25, 1000
    # Plan::request: a session's class from mix64(seed + session ^ 0xC1A55C1A).
    refund = [unit(mix64(((seed + s) & MASK) ^ 0xC1A55C1A)) < refund_share for s in range(sessions)]
    rng = random.Random(20261122)
    shares = []
    for _ in range(salts):
        salt = b"ro-" + rng.getrandbits(96).to_bytes(12, "big").hex().encode()  # as the controller makes them
        canary = [
            s for s in range(sessions)
            if int.from_bytes(hashlib.sha256(b"user-%d:" % s + salt).digest(), "big") % 10000 < weight_bp
        ]
        shares.append(sum(refund[s] for s in canary) / len(canary))
    shares.sort()
    at = lambda q: shares[min(len(shares) - 1, int(q * len(shares)))]
    print(f"refund sessions: {sum(refund) / sessions:.1%} of all {sessions}")
    print(f"in the 10% canary over {salts} salts: min {shares[0]:.1%}  p1 {at(0.01):.1%}  p5 {at(0.05):.1%}  "
          f"median {at(0.5):.1%}  p95 {at(0.95):.1%}  p99 {at(0.99):.1%}  max {shares[-1]:.1%}")


if __name__ == "__main__":
    main()
