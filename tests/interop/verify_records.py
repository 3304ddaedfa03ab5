#!/usr/bin/env python3
"""Verify kouan records without kouan: what a platform does on receipt.

Usage: verify_records.py PUBKEY RECORDS

PUBKEY is the agent's public key as an SPKI PEM (`kouan key show` prints
it; text before the PEM block is ignored), Ed25519 or P-256. RECORDS is a
CBOR sequence (RFC 8742) of tagged COSE_Sign1 records (RFC 9052), as
`kouan store export` writes it.

Each record must be a tagged COSE_Sign1 whose protected header holds `alg`
(EdDSA or ES256, matching the key) and `kid` (the first 8 bytes of the
SHA-256 of the key's SPKI DER), and whose signature verifies. The COSE part
is pycose's, an implementation independent of kouan's. The signature covers
the bytes exactly as received: records are sliced out of the input, never
re-encoded. The payloads must form a chain: within a stream `seq` counts up
by one and `prev` is the SHA-256 of the previous record's COSE bytes; a
genesis record has seq 0 and 32 zero bytes as prev, and only a genesis
record may start another stream.

Prints one line per problem, then a summary; exits 0 if everything
verifies, 1 if anything does not, 2 on usage errors.

Needs: python3 -m pip install 'pycose==1.1.*' 'cbor2<6' cryptography
"""

import base64
import collections
import hashlib
import io
import sys

import cbor2
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from pycose.algorithms import EdDSA, Es256
from pycose.headers import KID, Algorithm
from pycose.keys import EC2Key, OKPKey
from pycose.keys.curves import P256, Ed25519
from pycose.messages import Sign1Message

KID_LEN = 8
HASH_LEN = 32
STREAM_LEN = 16


class Problem(Exception):
    """What is wrong with one record."""


class Unreadable(Exception):
    """Bytes that are not CBOR, at an offset: nothing after them can be located."""

    def __init__(self, offset, reason):
        super().__init__(f"byte {offset} is not well-formed CBOR ({reason})")


def load_key(path):
    """The pycose key, its COSE algorithm and its kid, from an SPKI PEM."""
    with open(path, "rb") as f:
        text = f.read()
    begin, end = b"-----BEGIN PUBLIC KEY-----", b"-----END PUBLIC KEY-----"
    start, stop = text.find(begin), text.find(end)
    if start < 0 or stop < start:
        raise ValueError("no PUBLIC KEY PEM block")
    # The kid is the hash of the DER as given, so it is decoded, not re-encoded.
    spki = base64.b64decode(b"".join(text[start + len(begin) : stop].split()))
    public = serialization.load_der_public_key(spki)
    kid = hashlib.sha256(spki).digest()[:KID_LEN]

    if isinstance(public, ed25519.Ed25519PublicKey):
        raw = public.public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return OKPKey(crv=Ed25519, x=raw), EdDSA, kid
    if isinstance(public, ec.EllipticCurvePublicKey) and isinstance(
        public.curve, ec.SECP256R1
    ):
        numbers = public.public_numbers()
        x = numbers.x.to_bytes(32, "big")
        y = numbers.y.to_bytes(32, "big")
        return EC2Key(crv=P256, x=x, y=y), Es256, kid
    raise ValueError("not an Ed25519 or P-256 public key")


def split(data):
    """Yields (offset, bytes) of each CBOR item of a sequence.

    Decodes one item at a time from a stream and slices out the bytes the
    decoder consumed, so each record keeps the exact bytes it was signed
    and hashed as.
    """
    stream = io.BytesIO(data)
    decoder = cbor2.CBORDecoder(stream)
    while stream.tell() < len(data):
        start = stream.tell()
        try:
            decoder.decode()
        except cbor2.CBORDecodeError as e:
            raise Unreadable(start, e) from e
        yield start, data[start : stream.tell()]


def verify_record(record, key, alg, kid):
    """The payload map of a record whose COSE envelope verifies."""
    # pycose and cbor2 raise many kinds of exception on malformed input;
    # each one means the record is bad, not that this program is.
    try:
        message = Sign1Message.decode(record)
    except Exception as e:
        raise Problem(f"not a tagged COSE_Sign1: {e}") from e

    header_alg = message.phdr.get(Algorithm)
    if header_alg is None:
        raise Problem("protected header has no alg")
    if header_alg != alg:
        raise Problem(f"alg is {header_alg.fullname}, but the key is for {alg.fullname}")
    header_kid = message.phdr.get(KID)
    if not isinstance(header_kid, bytes):
        raise Problem("protected header has no kid")
    if header_kid != kid:
        raise Problem(f"kid is {header_kid.hex()}, but the key's kid is {kid.hex()}")

    message.key = key
    try:
        good = message.verify_signature()
    except Exception as e:
        raise Problem(f"signature check failed: {e}") from e
    if not good:
        raise Problem("signature does not verify")

    if message.payload is None:
        raise Problem("COSE_Sign1 has no payload")
    try:
        payload = cbor2.loads(message.payload)
    except (cbor2.CBORDecodeError, TypeError) as e:
        raise Problem(f"payload is not CBOR: {e}") from e
    if not isinstance(payload, dict):
        raise Problem("payload is not a CBOR map")
    expected = {
        "kind": str,
        "stream": bytes,
        "seq": int,
        "prev": bytes,
    }
    for field, kind in expected.items():
        if not isinstance(payload.get(field), kind):
            raise Problem(f"payload field {field!r} is missing or not {kind.__name__}")
    if len(payload["stream"]) != STREAM_LEN or len(payload["prev"]) != HASH_LEN:
        raise Problem(f"stream must be {STREAM_LEN} bytes and prev {HASH_LEN}")
    return payload


def chain_problems(payload, previous):
    """What is wrong with a record's place after `previous` (stream, seq, hash)."""
    seq = payload["seq"]
    genesis = payload["kind"] == "genesis"
    if genesis and (seq != 0 or payload["prev"] != bytes(HASH_LEN)):
        yield "genesis record must have seq 0 and 32 zero bytes as prev"
    if previous is None:
        return
    stream, prev_seq, prev_hash = previous
    if payload["stream"] != stream:
        if not genesis:
            yield (
                f"stream changes from {stream.hex()} to "
                f"{payload['stream'].hex()} without a genesis record"
            )
    elif seq != prev_seq + 1:
        yield f"seq {seq} follows seq {prev_seq}"
    elif payload["prev"] != prev_hash:
        yield f"prev is not the SHA-256 of record seq {prev_seq}"


def main(argv):
    if len(argv) != 3:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    try:
        key, alg, kid = load_key(argv[1])
    except (OSError, ValueError, UnsupportedAlgorithm) as e:
        print(f"public key {argv[1]}: {e}", file=sys.stderr)
        return 2
    try:
        with open(argv[2], "rb") as f:
            data = f.read()
    except OSError as e:
        print(f"records {argv[2]}: {e}", file=sys.stderr)
        return 2

    problems = 0
    records = 0
    kinds = collections.Counter()
    # Stream, seq and hash of the previous record, when it verified: the
    # chain cannot be followed through a record that does not.
    previous = None
    try:
        for index, (offset, record) in enumerate(split(data), start=1):
            records = index
            where = f"record #{index} at byte {offset}"
            try:
                payload = verify_record(record, key, alg, kid)
            except Problem as e:
                print(f"{where}: {e}")
                problems += 1
                previous = None
                continue
            where += f" (seq {payload['seq']})"
            for what in chain_problems(payload, previous):
                print(f"{where}: {what}")
                problems += 1
            kinds[payload["kind"]] += 1
            digest = hashlib.sha256(record).digest()
            previous = (payload["stream"], payload["seq"], digest)
    except Unreadable as e:
        records += 1
        print(f"record #{records}: {e}; the rest cannot be read")
        problems += 1

    verified = sum(kinds.values())
    counts = ", ".join(f"{kind} {n}" for kind, n in sorted(kinds.items())) or "none"
    if problems == 0:
        print(f"ok: {verified} of {records} records verify ({counts})")
        return 0
    noun = "problem" if problems == 1 else "problems"
    print(f"FAIL: {problems} {noun}; {verified} of {records} records verify ({counts})")
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
