#!/usr/bin/env python3
"""Independent reference for policy-canary cohort assignment (the DESIGN contract):

    bucket = int.from_bytes(sha256(session_id + b":" + salt).digest(), "big") % 10000
    cohort = "canary" if bucket < canary_weight_bp else "stable"

Writes tab-separated vectors: session (hex), salt (hex), weight, bucket, cohort.
Deterministic: `python3 cohort_vectors.py > cohort_vectors.tsv` reproduces the file.
"""
import hashlib
import random
import sys


def bucket(session: bytes, salt: bytes) -> int:
    return int.from_bytes(hashlib.sha256(session + b":" + salt).digest(), "big") % 10000


def cohort(b: int, weight: int) -> str:
    return "canary" if b < weight else "stable"


def main() -> None:
    rng = random.Random(20261122)
    sessions = [
        b"", b"a", b"user-1", b"session:with:colons", b"  spaced  ", b"x" * 1000,
        "caf\u00e9-\u4f1a\u8bdd-\U0001F600".encode(), b"\xff\xfe\x00\x01", b"\x80", b"tab\there",
        b"quote\"back\\slash", b"semi;colon=eq", b"0", b"9999", b"-1",
    ]
    salts = [b"", b"rollout-2026-11-22", b":", b"s" * 256, "sel-\u00e9".encode(), b"\xc3\x28"]
    weights = [0, 1, 100, 500, 2500, 5000, 9999, 10000]
    alphabet = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:;/@!~"
    for _ in range(200):
        n = rng.choice([1, 2, 8, 16, 36, 64, 200])
        sessions.append(bytes(rng.choice(alphabet) for _ in range(n)))
    for _ in range(20):
        sessions.append(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40))))
    out = sys.stdout
    out.write("# session_hex\tsalt_hex\tcanary_weight_bp\tbucket\tcohort\n")
    for i, session in enumerate(sessions):
        for j, salt in enumerate(salts):
            # A third of the session/salt pairs with four weights each keeps the file small but varied.
            if (i + j) % 3:
                continue
            b = bucket(session, salt)
            # Two weights from the list, plus the boundary itself: weight == bucket is stable,
            # weight == bucket + 1 is canary.
            for weight in (weights[(i + j) % len(weights)], weights[(i * 7 + j) % len(weights)], b, b + 1):
                out.write(f"{session.hex()}\t{salt.hex()}\t{weight}\t{b}\t{cohort(b, weight)}\n")


if __name__ == "__main__":
    main()
