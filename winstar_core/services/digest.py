"""Sync Edge by digest: the buckets both sides cut an edge's entities into, the hash of a bucket,
and the checks of what a peer sends (a :class:`SyncDigest` on the edge, a :class:`SyncDiff` in the
cloud). Pure functions over ids and tags; no database (see docs/protocol.md, "Sync Edge")."""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Iterable

from winstar_core.entity_types import shown
from winstar_core.errors import WinstarError
from winstar_core.transport.pb import sync_pb2 as pb

#: actions of the ``_sync`` events: the cloud's digest, the edge's answer, the cloud's ends
DIGEST_ACTION = "DIGEST"
DIFF_ACTION = "DIFF"
SYNC_ACTION = "SYNC"
#: at most 2^16 buckets; the cloud aims at about this many entities per bucket
MAX_BUCKET_BITS = 16
PER_BUCKET = 128
#: (id, tag) pairs per SyncDiff part: 24 bytes each, about 2.4 MB, well inside one message
MAX_DIFF_PAIRS = 100_000
#: parts of one SyncDiff (2^16 buckets of at most MAX_DIFF_PAIRS pairs each)
MAX_DIFF_PARTS = 1 << 16
_SYNC_ID = re.compile(r"[A-Za-z0-9-]{1,36}")
_MASK = (1 << 64) - 1


def bucket_bits_for(count: int) -> int:
    """How many leading bits of an id name its bucket, for ``count`` entities."""
    bits = 0
    while bits < MAX_BUCKET_BITS and (count >> bits) > PER_BUCKET:
        bits += 1
    return bits


def bucket_of(entity_id: uuid.UUID, bits: int) -> int:
    """The bucket of ``entity_id``: the first ``bits`` bits of its 16 bytes."""
    return int.from_bytes(entity_id.bytes[:4], "big") >> (32 - bits) if bits else 0


def tags(
    pairs: Iterable[tuple[uuid.UUID, int]], members: Iterable[tuple[uuid.UUID, uuid.UUID]]
) -> dict[uuid.UUID, int]:
    """The tag of each entity of ``pairs`` (id, version): its version, or for a container with
    ``members`` (container id, member id) a 64-bit BLAKE2b of its version and sorted member ids,
    so that a membership lost or gained shows as a difference too."""
    by_container: dict[uuid.UUID, list[bytes]] = {}
    for container_id, member_id in members:
        by_container.setdefault(container_id, []).append(member_id.bytes)
    out: dict[uuid.UUID, int] = {}
    for entity_id, version in pairs:
        held = by_container.get(entity_id)
        if held:
            raw = int(version).to_bytes(8, "big", signed=True) + b"".join(sorted(held))
            out[entity_id] = int.from_bytes(hashlib.blake2b(raw, digest_size=8).digest(), "big")
        else:
            out[entity_id] = int(version) & _MASK
    return out


def buckets(tagged: dict[uuid.UUID, int], bits: int) -> list[list[tuple[bytes, int]]]:
    """The (id bytes, tag) pairs of each bucket, sorted."""
    out: list[list[tuple[bytes, int]]] = [[] for _ in range(1 << bits)]
    for entity_id, tag in tagged.items():
        out[bucket_of(entity_id, bits)].append((entity_id.bytes, tag))
    for pairs in out:
        pairs.sort()
    return out


def summary(cut: list[list[tuple[bytes, int]]]) -> tuple[list[int], bytes]:
    """Each bucket's count, and the 8-byte hashes of the buckets' sorted pairs end to end."""
    hashes = b"".join(
        hashlib.blake2b(b"".join(i + t.to_bytes(8, "big") for i, t in pairs), digest_size=8).digest()
        for pairs in cut
    )
    return [len(pairs) for pairs in cut], hashes


def check_digest(digest: pb.SyncDigest) -> None:
    """Refuse a digest that is not one: a bad sync id, a bucket count or hash list of another size."""
    if not _SYNC_ID.fullmatch(digest.sync_id):
        raise WinstarError(
            f"the digest's sync id {shown(digest.sync_id)} is not 1 to 36 letters, digits or dashes"
        )
    if digest.bucket_bits > MAX_BUCKET_BITS:
        raise WinstarError(f"the digest has 2^{digest.bucket_bits} buckets; at most 2^{MAX_BUCKET_BITS}")
    n = 1 << digest.bucket_bits
    if len(digest.counts) != n or len(digest.hashes) != 8 * n:
        raise WinstarError(
            f"the digest of {n} buckets has {len(digest.counts)} counts and {len(digest.hashes)} hash bytes"
            f" (wanted {n} and {8 * n})"
        )


def diff_parts(
    digest: pb.SyncDigest, cut: list[list[tuple[bytes, int]]], counts: list[int], hashes: bytes
) -> list[pb.SyncDiff]:
    """The edge's answer: the pairs of each bucket that differs from the digest, in parts of at
    most :data:`MAX_DIFF_PAIRS` pairs, in bucket order (one empty part: nothing differs)."""
    parts: list[pb.SyncDiff] = []
    part = pb.SyncDiff(sync_id=digest.sync_id)
    ids: list[bytes] = []
    for b, pairs in enumerate(cut):
        if counts[b] == digest.counts[b] and hashes[8 * b : 8 * b + 8] == digest.hashes[8 * b : 8 * b + 8]:
            continue
        if ids and len(ids) + len(pairs) > MAX_DIFF_PAIRS:
            part.ids = b"".join(ids)
            parts.append(part)
            part, ids = pb.SyncDiff(sync_id=digest.sync_id), []
        part.buckets.append(b)
        ids.extend(i for i, _ in pairs)
        part.tags.extend(t for _, t in pairs)
    part.ids = b"".join(ids)
    parts.append(part)
    for n, p in enumerate(parts):
        p.part, p.parts = n, len(parts)
    return parts


def read_diff(diff: pb.SyncDiff, bits: int, after: int) -> dict[int, dict[uuid.UUID, int]]:
    """The pairs of a SyncDiff part, by bucket, checked: its buckets within ``2^bits``, increasing
    and past ``after`` (the last bucket an earlier part named, -1: none), its ids 16 bytes each,
    one tag per id, each id unique and in one of the part's buckets, at most
    :data:`MAX_DIFF_PAIRS`. Anything else is refused with the reason."""
    if not 1 <= diff.parts <= MAX_DIFF_PARTS or diff.part >= diff.parts:
        raise WinstarError(
            f"part {diff.part} of {diff.parts} is not a part of a diff (at most {MAX_DIFF_PARTS})"
        )
    named = list(diff.buckets)
    if len(named) > 1 << bits or any(b >= 1 << bits for b in named):
        raise WinstarError(f"the diff names buckets outside the digest's {1 << bits}")
    if any(b <= a for a, b in zip([after, *named], named, strict=False)):
        raise WinstarError("the diff's buckets are not in increasing order past its earlier parts'")
    if len(diff.ids) % 16 or len(diff.ids) // 16 != len(diff.tags):
        raise WinstarError(
            f"the diff has {len(diff.ids)} id bytes and {len(diff.tags)} tags (16 bytes and one tag per id)"
        )
    if len(diff.tags) > MAX_DIFF_PAIRS:
        raise WinstarError(f"the diff lists {len(diff.tags)} entities in one part; at most {MAX_DIFF_PAIRS}")
    out: dict[int, dict[uuid.UUID, int]] = {b: {} for b in named}
    raw = diff.ids
    for n, tag in enumerate(diff.tags):
        entity_id = uuid.UUID(bytes=raw[16 * n : 16 * n + 16])
        held = out.get(bucket_of(entity_id, bits))
        if held is None:
            raise WinstarError(f"the diff lists {entity_id}, which is in none of its buckets")
        if entity_id in held:
            raise WinstarError(f"the diff lists {entity_id} twice")
        held[entity_id] = tag
    return out
