"""Microseconds per presigned S3 PUT URL: our signer vs botocore vs the hashlib/hmac floor.

What it measures, per call, on one thread, no I/O:

* ``floor``      — the bare hash work a presign with a cached day key cannot avoid: one SHA-256
                   over a canonical request of realistic length (ours, for the same key) and one
                   HMAC-SHA256 over the string to sign, with their hexdigests;
* ``presign``    — ``S3Backend.put_query(key_path, request)`` with a fixed key path: the
                   presigned query a slot's PUT URL carries, signing host, content-length and
                   content-type (what ``make_slot`` runs);
* ``make_slot``  — ``S3Backend.make_slot(request)``: the above plus a fresh random token, the
                   file name's encoding and the Slot object;
* ``botocore``   — ``generate_presigned_url("put_object", …)`` on a botocore S3 client
                   (``Config(signature_version="s3v4")``, path style) for the same bucket, key,
                   ContentType and ContentLength.

The candidates are interleaved: each round times a batch of every candidate, in an order that
rotates from round to round, so drifts in machine speed hit all of them alike. Reported: the
median (and min/p90) over rounds of the per-call time, and the ratios ours/floor and
botocore/ours.

Run (from the repository root, ~3 s)::

    .venv/bin/python bench/presign.py [--rounds 40] [--batch 400] [--json bench/results/presign.json]
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import hmac
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import parse_qs, urlsplit

import harness

from slixmpp_http_upload import sigv4
from slixmpp_http_upload.s3 import S3Backend, parse_bucket_url
from slixmpp_http_upload.sigv4 import Credentials
from slixmpp_http_upload.slot import SlotRequest

BUCKET_URL, REGION, ACCESS_KEY, SECRET_KEY = harness.BUCKET_URL, harness.REGION, harness.ACCESS_KEY, harness.SECRET_KEY
TOKEN = "9f" * 32  # what token_bytes=32 gives: 64 hex characters
FILENAME = "holiday photo 2024.jpg"
SIZE = 1_234_567
CONTENT_TYPE = "image/jpeg"
EXPIRES = 300

Candidate = Callable[[], object]


def make_backend() -> S3Backend:
    return S3Backend(
        parse_bucket_url(BUCKET_URL), REGION, Credentials(ACCESS_KEY, SECRET_KEY), expiration_time=EXPIRES
    )


def key_path(backend: S3Backend) -> str:
    return f"{backend.bucket.path}/{TOKEN}/{sigv4.uri_encode(FILENAME)}"


REQUEST = SlotRequest(filename=FILENAME, size=SIZE, content_type=CONTENT_TYPE, domain="localhost")


def ours_presign(backend: S3Backend) -> Candidate:
    path = key_path(backend)
    return lambda: backend.put_query(path, REQUEST)


def ours_make_slot(backend: S3Backend) -> Candidate:
    return lambda: backend.make_slot(REQUEST)


def floor(backend: S3Backend) -> Candidate:
    """The two hashes of a presign with the day key cached, on inputs of the real length."""
    now = time.time()
    date = sigv4.amz_date(now)
    scope = sigv4.credential_scope(date[:8], REGION, "s3")
    block, signed = backend.signed_put_headers(REQUEST)
    query = sigv4.canonical_query_string(
        [
            ("X-Amz-Algorithm", sigv4.ALGORITHM),
            ("X-Amz-Credential", f"{ACCESS_KEY}/{scope}"),
            ("X-Amz-Date", date),
            ("X-Amz-Expires", str(EXPIRES)),
            ("X-Amz-SignedHeaders", signed),
        ]
    )
    request = sigv4.canonical_request("PUT", key_path(backend), query, block, signed).encode()
    prefix = f"{sigv4.ALGORITHM}\n{date}\n{scope}\n".encode()
    key = sigv4.signing_key(SECRET_KEY, date[:8], REGION, "s3")
    sha256, digest = hashlib.sha256, hmac.digest

    def sign() -> str:
        hashed = sha256(request).hexdigest()
        return digest(key, prefix + hashed.encode(), "sha256").hex()

    return sign


def botocore_client() -> Any:
    import botocore.session
    from botocore.config import Config

    return botocore.session.get_session().create_client(
        "s3",
        region_name=REGION,
        endpoint_url="http://127.0.0.1:9",
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
    )


def botocore_presign(client: Any) -> Candidate:
    params = {
        "Bucket": "bucket",
        "Key": f"{TOKEN}/{FILENAME}",
        "ContentType": CONTENT_TYPE,
        "ContentLength": SIZE,
    }
    return lambda: client.generate_presigned_url("put_object", Params=params, ExpiresIn=EXPIRES)


def signed_headers(url: str) -> str:
    return parse_qs(urlsplit(url).query).get("X-Amz-SignedHeaders", ["?"])[0]


def time_batch(candidate: Candidate, batch: int) -> float:
    """Microseconds per call over ``batch`` calls."""
    start = time.perf_counter_ns()
    for _ in range(batch):
        candidate()
    return (time.perf_counter_ns() - start) / batch / 1000


def interleave(candidates: dict[str, Candidate], rounds: int, batch: int) -> dict[str, list[float]]:
    """``rounds`` rounds; each times one batch of every candidate, the order rotating."""
    names = list(candidates)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for name in names:  # warm-up: caches, lazy imports, botocore's loaders
        time_batch(candidates[name], max(10, batch // 10))
    gc.collect()
    for round_index in range(rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(time_batch(candidates[name], batch))
    return samples


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "median_us": statistics.median(ordered),
        "min_us": ordered[0],
        "p90_us": ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))],
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=40, help="interleaved rounds (default 40)")
    parser.add_argument("--batch", type=int, default=400, help="calls per candidate per round (default 400)")
    parser.add_argument("--json", default=str(harness.RESULTS / "presign.json"), help="JSON output path")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    backend = make_backend()
    client = botocore_client()
    candidates = {
        "floor": floor(backend),
        "presign": ours_presign(backend),
        "make_slot": ours_make_slot(backend),
        "botocore": botocore_presign(client),
    }
    ours_url, boto_url = backend.make_slot(REQUEST).put_url, candidates["botocore"]()
    assert isinstance(ours_url, str) and isinstance(boto_url, str)
    print(f"signed headers: ours {signed_headers(ours_url)!r}, botocore {signed_headers(boto_url)!r}")
    print(f"URL length: ours {len(ours_url)}, botocore {len(boto_url)}")
    samples = interleave(candidates, args.rounds, args.batch)
    results = {name: summary(values) for name, values in samples.items()}
    med = {name: r["median_us"] for name, r in results.items()}
    ratios = {
        "presign/floor": med["presign"] / med["floor"],
        "make_slot/floor": med["make_slot"] / med["floor"],
        "make_slot/presign": med["make_slot"] / med["presign"],
        "botocore/presign": med["botocore"] / med["presign"],
        "botocore/make_slot": med["botocore"] / med["make_slot"],
    }
    print(f"\n{'candidate':<12} {'median µs':>10} {'min µs':>8} {'p90 µs':>8}", end="")
    print(f"   ({args.rounds} rounds × {args.batch} calls)")
    for name, r in results.items():
        print(f"{name:<12} {r['median_us']:>10.2f} {r['min_us']:>8.2f} {r['p90_us']:>8.2f}")
    for name, value in ratios.items():
        print(f"  {name}: {value:.2f}")
    document = {
        "benchmark": "presign",
        "machine": harness.machine(),
        "rounds": args.rounds,
        "batch": args.batch,
        "inputs": {"bucket_url": BUCKET_URL, "filename": FILENAME, "size": SIZE, "content_type": CONTENT_TYPE},
        "signed_headers": {"ours": signed_headers(ours_url), "botocore": signed_headers(boto_url)},
        "results": results,
        "ratios": ratios,
    }
    print(f"\nJSON: {harness.write_json(args.json, document)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
