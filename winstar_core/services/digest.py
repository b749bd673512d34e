"""Sync Edge by digest: the buckets both sides cut an edge's entities into, the hash of a bucket,
and the checks of what a peer sends (a :class:`SyncDigest` on the edge, a :class:`SyncDiff` in the
cloud). Pure functions over ids and tags; no database (see docs/protocol.md, "Sync Edge")."""

from __future__ import annotations

import hashlib
import re
import uuid
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

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


def id_ranges(buckets: Iterable[int], bits: int) -> list[tuple[uuid.UUID, uuid.UUID | None]]:
    """The ids of ``buckets`` (sorted) as [low, high) ranges of ids, consecutive buckets merged:
    a bucket is the first ``bits`` bits of an id, so its ids are one range (high None: to the
    last id). Both databases order UUIDs as their 16 bytes (PostgreSQL's ``uuid``, SQLite's
    32 hex digits), so a range is an index range."""
    out: list[tuple[int, int]] = []
    for b in buckets:
        if out and out[-1][1] == b:
            out[-1] = (out[-1][0], b + 1)
        else:
            out.append((b, b + 1))
    shift = 128 - bits
    return [
        (uuid.UUID(int=lo << shift), uuid.UUID(int=hi << shift) if hi < 1 << bits else None) for lo, hi in out
    ]


def tagged(
    pairs: Iterable[tuple[uuid.UUID, int]], members: Iterable[tuple[uuid.UUID, uuid.UUID]]
) -> Iterator[tuple[uuid.UUID, int]]:
    """The tag of each entity of ``pairs`` (id, version), as they come: its version, or for a
    container with ``members`` (container id, member id) a 64-bit BLAKE2b of its version and
    sorted member ids, so that a membership lost or gained shows as a difference too."""
    by_container: dict[uuid.UUID, list[bytes]] = {}
    for container_id, member_id in members:
        by_container.setdefault(container_id, []).append(member_id.bytes)
    for entity_id, version in pairs:
        held = by_container.get(entity_id)
        if held:
            raw = int(version).to_bytes(8, "big", signed=True) + b"".join(sorted(held))
            yield entity_id, int.from_bytes(hashlib.blake2b(raw, digest_size=8).digest(), "big")
        else:
            yield entity_id, int(version) & _MASK


def tags(
    pairs: Iterable[tuple[uuid.UUID, int]], members: Iterable[tuple[uuid.UUID, uuid.UUID]]
) -> dict[uuid.UUID, int]:
    """:func:`tagged`, as a dict."""
    return dict(tagged(pairs, members))


def buckets(tagged: Iterable[tuple[uuid.UUID, int]], bits: int) -> list[list[bytes]]:
    """The pairs of each bucket, sorted, each as 24 bytes: the id's 16 and the tag's 8 (big-endian),
    the bytes the bucket's hash is made of (an object per pair, not three: 100,000 of them)."""
    out: list[list[bytes]] = [[] for _ in range(1 << bits)]
    for entity_id, tag in tagged:
        out[bucket_of(entity_id, bits)].append(entity_id.bytes + tag.to_bytes(8, "big"))
    for pairs in out:
        pairs.sort()
    return out


def summary(cut: list[list[bytes]]) -> tuple[list[int], bytes]:
    """Each bucket's count, and the 8-byte hashes of the buckets' sorted pairs end to end."""
    hashes = b"".join(hashlib.blake2b(b"".join(pairs), digest_size=8).digest() for pairs in cut)
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
    digest: pb.SyncDigest, cut: list[list[bytes]], counts: list[int], hashes: bytes
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
        ids.extend(p[:16] for p in pairs)
        part.tags.extend(int.from_bytes(p[16:], "big") for p in pairs)
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


def groups(buckets: Iterable[int], counts: Sequence[int], per: int) -> list[list[int]]:
    """``buckets`` (sorted) in consecutive groups of about ``per`` entities by ``counts``
    (each bucket's, as the digest says), a bucket never cut."""
    out: list[list[int]] = [[]]
    size = 0
    for b in buckets:
        if out[-1] and size + counts[b] > per:
            out.append([])
            size = 0
        out[-1].append(b)
        size += counts[b]
    return out


def pack(ids: Iterable[uuid.UUID]) -> bytearray:
    """``ids`` end to end, 16 bytes each (:attr:`Answer.todo`)."""
    return bytearray(b"".join(i.bytes for i in ids))


@dataclass
class Answer:
    """A diff part the cloud answers in several transactions (``CloudDigest.answer_sync_diff``):
    what the first one worked out, and what is left to write."""

    edge_id: uuid.UUID
    digest: pb.SyncDigest
    diff: pb.SyncDiff
    #: the buckets answered below this part (its ``start``) and after it
    start: int
    covered_to: int
    #: the counts of the part, known from the first transaction on (what differed then)
    counts: dict[str, int]
    received_bytes: int
    #: the ids whose states are still to be written, in the order they are sent (by type rank),
    #: 16 bytes each (:func:`pack`; 100,000 ids in 1.6 MB, not 100,000 objects)
    todo: bytearray
    #: those the edge holds with another tag, their 16 bytes (UPDATED, ``replace`` set): the
    #: rest are ADDED
    changed: set[bytes]
    #: the containers sent, (id, tenant, type): their memberships follow every state
    containers: deque[tuple[uuid.UUID, uuid.UUID, str]] = field(default_factory=deque)
    #: the members of the container being written (its memberships not queued yet)
    members: deque[uuid.UUID] = field(default_factory=deque)
    member_of: tuple[uuid.UUID, uuid.UUID, str] | None = None
    #: the ``sync_id`` of the progress end the last transaction wrote ("": none yet)
    token: str = ""
    #: the groups of the part's buckets whose ends are still to be written (None: not begun)
    groups: deque[list[int]] | None = None

    @property
    def final(self) -> bool:
        """Whether this is the diff's last part (its end closes the sync)."""
        return self.diff.part + 1 == self.diff.parts

    def take(self, n: int) -> list[uuid.UUID]:
        """The next ``n`` ids of :attr:`todo` (fewer at its end), taken off it."""
        cut = bytes(self.todo[: 16 * n])
        del self.todo[: 16 * n]
        return [uuid.UUID(bytes=cut[i : i + 16]) for i in range(0, len(cut), 16)]

    @property
    def done_writing(self) -> bool:
        """Every state and membership queued: only the end is left."""
        return not (self.todo or self.containers or self.members)
