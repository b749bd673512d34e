"""The numbers both ends of the link hold each other to, named once (see docs/protocol.md)."""

from __future__ import annotations

#: the largest message either side sends or accepts
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
#: the smallest ``max_message_bytes`` a peer may announce: an entity's data (4 MiB) and a part
#: of a Sync Edge's id list (~3.9 MB) must fit in one message, or the sender would have to FAIL
#: them. A peer announcing less is refused; one announcing more is held to our own maximum.
MIN_PEER_MESSAGE_BYTES = 8 * 1024 * 1024
#: the first message of a session (the Hello), read only after the metadata authenticated it
HELLO_MAX_BYTES = 64 * 1024
#: room left in a message for the batch's envelope around one event's body
ENVELOPE_BYTES = 64 * 1024
#: events per batch a sender reads by default, and the most a receiver accepts in one message
BATCH_SIZE = 500
MAX_BATCH_EVENTS = 10_000
#: batches a sender sends before the first is acknowledged
MAX_IN_FLIGHT = 4
#: the seq range, and how far past what a receiver knows of a stream (its mark, or the last_seq
#: the sender last announced) a batch or a peer's mark may go (see winstar_core/store/outbox.py)
from winstar_core.store.outbox import MAX_SEQ as MAX_SEQ  # noqa: E402
from winstar_core.store.outbox import MAX_SEQ_JUMP as MAX_SEQ_JUMP  # noqa: E402

#: entity types a Hello or Welcome may announce
MAX_ANNOUNCED_TYPES = 1_000

# -- names on the wire --------------------------------------------------------------------------

SERVICE_NAME = "winstar.edge.v1.EdgeSync"

#: the call's metadata that authenticates an edge, checked before any message is read
METADATA_ROUTING_KEY = "winstar-routing-key"
METADATA_SECRET = "winstar-secret"
#: the cloud's initial metadata once it authenticated the edge: the edge sends its Hello then
METADATA_ADMITTED = "winstar-admitted"
#: seconds an authenticated edge has to send its Hello
HELLO_TIMEOUT_S = 30.0
