"""The console's operations: what the REST API and the web pages do, for one signed-in user, in
one transaction. Each checks the user's rights (:mod:`winstar_core.services.rights`), calls the
cloud service the CLI calls (no rule is written twice) and answers the JSON shape of CLI.md.

``Ops(cloud, who)``: ``cloud`` a :class:`CloudService` on the request's transaction, ``who`` the
:class:`Principal` asking. A refusal is a :class:`WinstarError` with one line, raised before
the transaction commits (nothing changes).
"""

from __future__ import annotations

from typing import Any

import marshmallow
import sqlalchemy as sa
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import DecodeError

from winstar_core.entity_types import text_problem
from winstar_core.errors import NotFound, WinstarError
from winstar_core.services import auth
from winstar_core.services.cloud import CloudService, edge_connected
from winstar_core.services.constants import (
    ADDED,
    MEMBER_ADDED,
    MEMBER_REMOVED,
    SYNC_EVENT_TYPE,
    UPDATED,
    USER_EVENT_TYPE,
)
from winstar_core.services.ids import parse_uuid
from winstar_core.services.rights import EDGE_RESOURCE, Principal
from winstar_core.services.shapes import customer_json, edge_details, edges_view, token_json, user_json
from winstar_core.services.views import entity_json, event_json
from winstar_core.store.models import (
    EVENT_STATUSES,
    Assignment,
    Customer,
    Edge,
    EdgeEvent,
    Entity,
    User,
)
from winstar_core.transport.pb import sync_pb2 as pb

#: the most events one page of downlinks holds
MAX_PAGE = 500
DEFAULT_PAGE = 50
MAX_SEQS = 10_000


def principal(cloud: CloudService, user: User) -> Principal:
    """``user`` as the rights see them (their roles' permissions read now)."""
    return Principal(
        user_id=user.id,
        email=user.email,
        tenant_id=user.tenant_id,
        authority=user.authority,
        customer_id=user.customer_id,
        permissions=frozenset(p.upper() for p in cloud.user_permissions(user)),
        edition=cloud.edition,
    )


def check_status(status: str | None) -> str | None:
    if status in (None, ""):
        return None
    if not isinstance(status, str) or status.upper() not in EVENT_STATUSES:
        raise WinstarError(f"status must be one of {', '.join(s.lower() for s in EVENT_STATUSES)}")
    return status.upper()


def check_int(raw: Any, what: str, low: int = 1, high: int = 2**63 - 1) -> int:
    """``raw`` (text of a query string, or a JSON number) as an integer in ``[low, high]``."""
    if isinstance(raw, bool):
        raise WinstarError(f"{what} must be an integer")
    if isinstance(raw, str):
        if not raw.isascii() or not raw.strip().lstrip("-").isdigit() or len(raw) > 20:
            raise WinstarError(f"{what} must be an integer")
        raw = int(raw)
    if not isinstance(raw, int):
        raise WinstarError(f"{what} must be an integer")
    if not low <= raw <= high:
        raise WinstarError(f"{what} must be between {low} and {high}")
    return raw


def check_text(raw: Any, what: str, *, required: bool = True) -> str | None:
    if raw is None and not required:
        return None
    if not isinstance(raw, str) or (required and not raw):
        raise WinstarError(f"{what} must be a non-empty string" if required else f"{what} must be a string")
    why = text_problem(raw)
    if why:  # the database could not even look it up
        raise WinstarError(f"{what} may not contain {why}")
    return raw


def check_seqs(raw: Any) -> list[int] | None:
    """A request's ``seqs``: a list of event seqs, or None/absent for all."""
    if raw is None:
        return None
    if not isinstance(raw, list) or len(raw) > MAX_SEQS:
        raise WinstarError(f"seqs must be a list of at most {MAX_SEQS} event seqs")
    if not all(isinstance(s, int) and not isinstance(s, bool) for s in raw):
        raise WinstarError("seqs must be a list of integers")
    return [check_int(s, "each seq") for s in raw]


class Ops:
    """One user's operations in one transaction."""

    def __init__(self, cloud: CloudService, who: Principal) -> None:
        self.cloud = cloud
        self.who = who
        self.session = cloud.session

    # -- look-ups within the user's sight ---------------------------------------------------------
    def edge(self, ref: str) -> Edge:
        """The edge ``ref`` (id or name) among those the user sees; NotFound otherwise."""
        if text_problem(ref):  # no name holds it (and PostgreSQL could not even compare it)
            raise NotFound(f"no edge {ref!r}")
        uid = parse_uuid(ref)
        stmt = sa.select(Edge).where(Edge.tenant_id == self.who.tenant_id)
        stmt = stmt.where(Edge.id == uid if uid else Edge.name == ref)
        edge = self.session.scalars(stmt).first()
        if edge is None or not self.who.sees(edge.tenant_id, edge.customer_id):
            raise NotFound(f"no edge {ref!r}")
        return edge

    def entity(self, type_name: str, ref: str) -> Entity:
        """The ``type_name`` entity ``ref`` among those the user sees; NotFound otherwise."""
        self.cloud.types.get(type_name)  # an unknown type says so
        if text_problem(ref):  # no name holds it (and PostgreSQL could not even compare it)
            raise NotFound(f"no {type_name} {ref!r}")
        try:
            entity = self.cloud.entities.find_entity(type_name, ref, self.who.tenant_id)
        except NotFound:
            raise NotFound(f"no {type_name} {ref!r}") from None
        if not self.who.sees(entity.tenant_id, entity.customer_id):
            raise NotFound(f"no {type_name} {ref!r}")
        return entity

    def customer(self, ref: str | None) -> Customer | None:
        """The customer a new edge or entity belongs to: a customer user's own (they cannot name
        another), or the one a tenant administrator names (None: the tenant's)."""
        if not self.who.admin:
            if ref not in (None, "", str(self.who.customer_id)):
                raise NotFound(f"no customer {ref!r}")
            return self.session.get(Customer, self.who.customer_id)
        if ref in (None, ""):
            return None
        return self.cloud.find_customer(str(ref), self.cloud.find_tenant(self.who.tenant_id))

    def _write(self, resource: str, what: str) -> None:
        self.who.require_write(resource, what)

    # -- edges ------------------------------------------------------------------------------------
    def edges(self) -> list[dict[str, Any]]:
        """The edges the user sees, by name: `edge list`'s shape plus ``failed`` and ``last_sync``."""
        where = [Edge.tenant_id == self.who.tenant_id]
        if not self.who.admin:
            where.append(Edge.customer_id == self.who.customer_id)
        return edges_view(self.session, where, console=True)

    def show_edge(self, ref: str) -> dict[str, Any]:
        """`edge show`, plus the edge's ``routing_key`` (the Edge details page shows it)."""
        edge = self.edge(ref)
        return {**edge_details(self.cloud, edge), "routing_key": edge.routing_key}

    def create_edge(self, name: Any, customer_ref: Any = None) -> dict[str, Any]:
        """A new edge; its secret is in the answer, this once."""
        self._write(EDGE_RESOURCE, "create edges")
        name = check_text(name, "name")
        customer = self.customer(check_text(customer_ref, "customer", required=False))
        edge, secret = self.cloud.create_edge(str(name), self.cloud.find_tenant(self.who.tenant_id), customer)
        return {
            "id": str(edge.id),
            "name": edge.name,
            "tenant_id": str(edge.tenant_id),
            "customer_id": str(edge.customer_id) if edge.customer_id else None,
            "routing_key": edge.routing_key,
            "secret": secret,
        }

    def rotate_secret(self, ref: str) -> dict[str, Any]:
        self._write(EDGE_RESOURCE, "change an edge's secret")
        edge = self.edge(ref)
        secret = self.cloud.rotate_secret(edge)
        return {"id": str(edge.id), "routing_key": edge.routing_key, "secret": secret}

    def delete_edge(self, ref: str) -> dict[str, Any]:
        self._write(EDGE_RESOURCE, "delete edges")
        edge = self.edge(ref)
        edge_id = edge.id
        self.cloud.delete_edge(edge)
        return {"id": str(edge_id), "deleted": True}

    def downlinks(
        self, ref: str, status: Any = None, limit: Any = None, before: Any = None
    ) -> list[dict[str, Any]]:
        """A page of the edge's downlinks, newest first: at most ``limit`` (default
        :data:`DEFAULT_PAGE`), older than seq ``before`` when given (the next page starts below
        the last seq of this one)."""
        edge = self.edge(ref)
        status = check_status(status)
        limit = DEFAULT_PAGE if limit in (None, "") else check_int(limit, "limit", 1, MAX_PAGE)
        stmt = sa.select(EdgeEvent).where(EdgeEvent.edge_id == edge.id)
        if status:
            stmt = stmt.where(EdgeEvent.status == status)
        if before not in (None, ""):
            stmt = stmt.where(EdgeEvent.seq < check_int(before, "before"))
        rows = self.session.scalars(stmt.order_by(EdgeEvent.seq.desc()).limit(limit))
        # retried_as: a FAILED event queued again names its copy's seq (it is not retried twice)
        return [{**event_json(ev), "retried_as": ev.retried_as} for ev in rows]

    def downlink(self, ref: str, seq: Any) -> dict[str, Any]:
        """One downlink with its payload, decoded."""
        edge = self.edge(ref)
        seq = check_int(seq, "seq")
        ev = self.session.scalars(
            sa.select(EdgeEvent).where(EdgeEvent.edge_id == edge.id, EdgeEvent.seq == seq)
        ).first()
        if ev is None:
            raise NotFound(f"edge {edge.name!r} has no downlink {seq}")
        payload = event_payload(self.cloud, ev)
        # every user of the tenant goes to each of its edges; a customer user reads only the users
        # of their own customer (the users list is a tenant administrator's)
        if (
            ev.type == USER_EVENT_TYPE
            and not self.who.admin
            and isinstance(payload, dict)
            and payload.get("customer_id") != str(self.who.customer_id)
        ):
            payload = {"withheld": "a user of another customer, or of the tenant"}
        return {**event_json(ev), "retried_as": ev.retried_as, "payload": payload}

    def sync(self, ref: str) -> dict[str, Any]:
        self._write(EDGE_RESOURCE, "sync edges")
        edge = self.edge(ref)
        self.cloud.request_sync(edge)
        return {"edge_id": str(edge.id), "requested": True, "connected": edge_connected(edge)}

    def retry(self, ref: str, seqs: Any = None) -> dict[str, Any]:
        self._write(EDGE_RESOURCE, "retry downlinks")
        edge = self.edge(ref)
        new = self.cloud.retry_failed(edge, check_seqs(seqs))
        return {"edge_id": str(edge.id), "retried": len(new), "seqs": new}

    def dismiss(self, ref: str, seqs: Any = None) -> dict[str, Any]:
        self._write(EDGE_RESOURCE, "dismiss downlinks")
        edge = self.edge(ref)
        done = self.cloud.dismiss_failed(edge, check_seqs(seqs))
        return {"edge_id": str(edge.id), "dismissed": len(done), "seqs": done}

    def edge_entities(self, ref: str) -> list[dict[str, Any]]:
        """`edge entities`, each with ``direct``: assigned itself (not only through a container),
        so it can be unassigned."""
        edge = self.edge(ref)
        direct = set(
            self.session.scalars(sa.select(Assignment.entity_id).where(Assignment.edge_id == edge.id))
        )
        return [
            {"id": str(e.id), "type": e.type, "name": e.name, "version": e.version, "direct": e.id in direct}
            for e in self.cloud.effective_entities(edge)
        ]

    def assign(self, ref: str, type_name: Any, entity_ref: Any) -> dict[str, Any]:
        self._write(EDGE_RESOURCE, "assign entities to edges")
        edge = self.edge(ref)
        entity = self.entity(str(check_text(type_name, "type")), str(check_text(entity_ref, "ref")))
        self.cloud.assign(edge, entity)
        return {"edge_id": str(edge.id), "entity_id": str(entity.id), "type": entity.type}

    def unassign(self, ref: str, type_name: str, entity_ref: str) -> dict[str, Any]:
        self._write(EDGE_RESOURCE, "unassign entities from edges")
        edge = self.edge(ref)
        entity = self.entity(type_name, entity_ref)
        self.cloud.unassign(edge, entity)
        return {"edge_id": str(edge.id), "entity_id": str(entity.id), "type": entity.type}

    # -- entities ---------------------------------------------------------------------------------
    def types(self) -> list[dict[str, Any]]:
        """The installed entity types, each with the fields of its schema (the forms are built
        from them)."""
        return [type_json(self.cloud, t.name) for t in sorted(self.cloud.types, key=lambda t: t.name)]

    def entities(self, type_name: str, limit: Any = None, offset: Any = None) -> list[dict[str, Any]]:
        """The ``type_name`` entities the user sees, by name (then id): all of them, or a page of
        at most ``limit`` after skipping ``offset``."""
        self.cloud.types.get(type_name)
        stmt = sa.select(Entity).where(Entity.type == type_name, Entity.tenant_id == self.who.tenant_id)
        if not self.who.admin:
            stmt = stmt.where(Entity.customer_id == self.who.customer_id)
        stmt = stmt.order_by(Entity.name, Entity.id)
        if limit not in (None, ""):
            stmt = stmt.limit(check_int(limit, "limit", 1, 10_000))
        if offset not in (None, ""):
            stmt = stmt.offset(check_int(offset, "offset", 0))
        return [entity_json(e) for e in self.session.scalars(stmt)]

    def show_entity(self, type_name: str, ref: str) -> dict[str, Any]:
        return entity_json(self.entity(type_name, ref))

    def create_entity(self, type_name: str, body: Any) -> dict[str, Any]:
        etype = self.cloud.types.get(type_name)
        body = check_object(body, "the request")
        self._write(etype.resource(), f"create a {type_name}")
        name = check_text(body.get("name"), "name")
        data = check_object(body.get("data", {}), "data")
        customer = self.customer(check_text(body.get("customer"), "customer", required=False))
        entity = self.cloud.create_entity(
            type_name, str(name), self.cloud.find_tenant(self.who.tenant_id), data, customer=customer
        )
        return entity_json(entity)

    def update_entity(self, type_name: str, ref: str, body: Any) -> dict[str, Any]:
        etype = self.cloud.types.get(type_name)
        body = check_object(body, "the request")
        entity = self.entity(type_name, ref)
        self._write(etype.resource(), f"change a {type_name}")
        unknown = set(body) - {"name", "data", "replace"}
        if unknown:
            raise WinstarError(f"unknown field {sorted(unknown)[0]!r}: send name, data and/or replace")
        name = check_text(body.get("name"), "name", required=False)
        data = check_object(body["data"], "data") if body.get("data") is not None else None
        replace = body.get("replace", False)
        if not isinstance(replace, bool):
            raise WinstarError("replace must be true or false")
        return entity_json(self.cloud.update_entity(entity, name=name, data=data, replace=replace))

    def delete_entity(self, type_name: str, ref: str) -> dict[str, Any]:
        etype = self.cloud.types.get(type_name)
        entity = self.entity(type_name, ref)
        self._write(etype.resource(), f"delete a {type_name}")
        entity_id = entity.id
        self.cloud.delete_entity(entity)
        return {"id": str(entity_id), "deleted": True}

    def members(self, type_name: str, ref: str) -> list[dict[str, Any]]:
        container = self.entity(type_name, ref)
        return [
            {"id": str(m.id), "type": m.type, "name": m.name}
            for m in self.cloud.members(container)
            if self.who.sees(m.tenant_id, m.customer_id)
        ]

    def add_member(self, type_name: str, ref: str, member_type: Any, member_ref: Any) -> dict[str, Any]:
        etype = self.cloud.types.get(type_name)
        container = self.entity(type_name, ref)
        member = self.entity(str(check_text(member_type, "type")), str(check_text(member_ref, "ref")))
        self._write(etype.resource(), f"change a {type_name}'s members")
        self.cloud.add_member(container, member)
        return {"group_id": str(container.id), "entity_id": str(member.id)}

    def remove_member(self, type_name: str, ref: str, member_type: str, member_ref: str) -> dict[str, Any]:
        etype = self.cloud.types.get(type_name)
        container = self.entity(type_name, ref)
        member = self.entity(member_type, member_ref)
        self._write(etype.resource(), f"change a {type_name}'s members")
        self.cloud.remove_member(container, member)
        return {"group_id": str(container.id), "entity_id": str(member.id)}

    # -- users and tokens -------------------------------------------------------------------------
    def me(self) -> dict[str, Any]:
        user = self.session.get(User, self.who.user_id)
        assert user is not None
        return {**user_json(self.cloud, user), "may_write": self._writable()}

    def _writable(self) -> list[str]:
        resources = {EDGE_RESOURCE, *(t.resource() for t in self.cloud.types)}
        return sorted(r for r in resources if self.who.may_write(r))

    def users(self) -> list[dict[str, Any]]:
        self.who.require_admin("list users")
        return [user_json(self.cloud, u) for u in self.cloud.tenant_users(self.who.tenant_id)]

    def create_user(self, body: Any) -> dict[str, Any]:
        self.who.require_admin("create users")
        body = check_object(body, "the request")
        tenant = self.cloud.find_tenant(self.who.tenant_id)
        email = check_text(body.get("email"), "email")
        authority = check_text(body.get("authority"), "authority")
        customer_ref = check_text(body.get("customer"), "customer", required=False)
        customer = self.cloud.find_customer(customer_ref, tenant) if customer_ref else None
        roles_raw = body.get("roles", [])
        if not isinstance(roles_raw, list) or not all(isinstance(r, str) for r in roles_raw):
            raise WinstarError("roles must be a list of role names or ids")
        roles = [self.cloud.find_role(str(check_text(r, "a role")), tenant) for r in roles_raw]
        user = self.cloud.create_user(str(email), tenant, str(authority), customer, roles)
        password = body.get("password")
        if password is not None:
            auth.set_password(self.session, user, str(check_text(password, "password")))
        return user_json(self.cloud, user)

    def customers(self) -> list[dict[str, Any]]:
        stmt = sa.select(Customer).where(Customer.tenant_id == self.who.tenant_id)
        if not self.who.admin:
            stmt = stmt.where(Customer.id == self.who.customer_id)
        return [customer_json(c) for c in self.session.scalars(stmt.order_by(Customer.name))]

    def tokens(self) -> list[dict[str, Any]]:
        user = self.session.get(User, self.who.user_id)
        assert user is not None
        return [token_json(t) for t in auth.user_tokens(self.session, user)]

    def create_token(self, name: Any) -> dict[str, Any]:
        user = self.session.get(User, self.who.user_id)
        assert user is not None
        if name is not None:
            check_text(name, "name")  # given: not empty
        issued = auth.create_token(self.session, user, name)
        return {"id": str(issued.id), "name": issued.name, "token": issued.token}

    def revoke_token(self, ref: str) -> dict[str, Any]:
        user = self.session.get(User, self.who.user_id)
        assert user is not None
        row = auth.revoke_token(self.session, ref, user)
        return {"id": str(row.id), "revoked": True}


def check_object(raw: Any, what: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise WinstarError(f"{what} must be a JSON object")
    return raw


# -- an event's payload -----------------------------------------------------------------------------
def event_payload(cloud: CloudService, ev: EdgeEvent) -> Any:
    """An event's body as JSON: an entity's state with its data decoded by its type, a membership,
    a user, a sync's parts; None for an event without a body; a line when it cannot be read."""
    body = bytes(ev.body or b"")
    if not body:
        return None
    try:
        if ev.type == USER_EVENT_TYPE:
            return MessageToDict(pb.UserInfo.FromString(body), preserving_proto_field_name=True)
        if ev.type == SYNC_EVENT_TYPE:
            for kind in (pb.SyncEnd, pb.SyncDigest):
                try:
                    return MessageToDict(kind.FromString(body), preserving_proto_field_name=True)
                except DecodeError:
                    continue
            return {"bytes": len(body)}
        if ev.action in (MEMBER_ADDED, MEMBER_REMOVED):
            return MessageToDict(pb.Membership.FromString(body), preserving_proto_field_name=True)
        if ev.action in (ADDED, UPDATED):
            state = pb.EntityState.FromString(body)
            out = MessageToDict(state, preserving_proto_field_name=True)
            out.pop("payload", None)
            try:
                out["data"] = cloud.types.get(state.type).deserialize(state.payload)
            except WinstarError as exc:
                out["data_error"] = str(exc)
            return out
    except (DecodeError, ValueError, TypeError, RecursionError):
        return {"unreadable": f"{len(body)} bytes that are not a {ev.type} {ev.action.lower()} event"}
    return {"bytes": len(body)}


# -- a type and its fields --------------------------------------------------------------------------
def type_json(cloud: CloudService, type_name: str) -> dict[str, Any]:
    etype = cloud.types.get(type_name)
    return {
        "type": etype.name,
        "plugin": cloud.types.owner(etype.name),
        "resource": etype.resource(),
        "container": etype.container,
        "creatable_on_edge": etype.creatable_on_edge,
        "schema_version": etype.schema_version,
        "fields": schema_fields(etype.schema_instance()),
    }


_KINDS: list[tuple[type[marshmallow.fields.Field], str]] = [
    (marshmallow.fields.Boolean, "boolean"),
    (marshmallow.fields.Integer, "integer"),
    (marshmallow.fields.Number, "number"),
    (marshmallow.fields.Nested, "object"),
    (marshmallow.fields.Dict, "object"),
    (marshmallow.fields.List, "array"),
    (marshmallow.fields.Email, "email"),
    (marshmallow.fields.Url, "url"),
    (marshmallow.fields.String, "string"),
]


def schema_fields(schema: marshmallow.Schema) -> list[dict[str, Any]]:
    """A marshmallow schema's fields as plain descriptions (name, kind, required, default,
    choices, bounds, description, and for a nested schema its own fields), in declaration order."""
    out = []
    for name, field in schema.fields.items():
        if field.dump_only:
            continue
        kind = next((k for cls, k in _KINDS if isinstance(field, cls)), "any")
        default = field.load_default
        item: dict[str, Any] = {
            "name": field.data_key or name,
            "kind": kind,
            "required": bool(field.required),
            "allow_none": bool(field.allow_none),
            "default": None if callable(default) or default is marshmallow.missing else default,
            "description": field.metadata.get("description"),
        }
        for v in field.validators:
            if isinstance(v, marshmallow.validate.OneOf):
                item["choices"] = [c for c in v.choices]
            elif isinstance(v, marshmallow.validate.Length):
                item["min_length"], item["max_length"] = v.min, v.max
            elif isinstance(v, marshmallow.validate.Range):
                item["min"], item["max"] = v.min, v.max
        if isinstance(field, marshmallow.fields.Nested) and isinstance(field.schema, marshmallow.Schema):
            item["fields"] = schema_fields(field.schema)
        out.append(item)
    return out
