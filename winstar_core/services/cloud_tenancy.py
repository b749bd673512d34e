"""The cloud's tenants, customers, roles and users, and the ``_user`` downlinks a user's change
sends to every edge of its tenant."""

from __future__ import annotations

import uuid
from collections.abc import Iterable

import sqlalchemy as sa

from winstar_core.errors import Conflict, NotFound, WinstarError
from winstar_core.services.cloud_base import CloudBase
from winstar_core.services.constants import AUTHORITIES, MAX_NAME, UPDATED, USER_EVENT_TYPE
from winstar_core.services.ids import parse_uuid
from winstar_core.services.names import clean_name
from winstar_core.store.models import Customer, Edge, Role, Tenant, User, UserRole, now_ms
from winstar_core.store.outbox import OutboxEvent
from winstar_core.transport.pb import sync_pb2 as pb


def parse_permission(raw: str) -> str:
    """``raw`` as ``RESOURCE:OPERATION`` in upper case; a :class:`WinstarError` if it is not one."""
    parts = raw.strip().upper().split(":")
    if len(parts) != 2 or not all(parts):
        raise WinstarError(f"permission {raw!r} is not RESOURCE:OPERATION (for example DEVICE:WRITE)")
    return f"{parts[0]}:{parts[1]}"


class CloudTenancy(CloudBase):
    """Tenants, customers, roles (PE) and users. Uses ``session``, ``pinned`` (through
    :meth:`held`), ``edition`` and ``outbox`` (a user's change goes to its tenant's edges)."""

    def find_tenant(self, ref: str | uuid.UUID) -> Tenant:
        """The tenant with id or name ``ref`` (held for the transaction); :class:`NotFound` if none."""
        tenant = self.held(Tenant, ref) if isinstance(ref, uuid.UUID) else None
        if tenant is None:
            tenant = self.entities.find_tenant(ref)
            self.pinned[tenant.id] = tenant
        return tenant

    def default_tenant(self, ref: str | None) -> Tenant:
        """The tenant named by ``--tenant``, or the only tenant there is."""
        if ref:
            return self.find_tenant(ref)
        tenants = list(self.session.scalars(sa.select(Tenant).limit(2)))
        if len(tenants) == 1:
            return tenants[0]
        if not tenants:
            raise NotFound("no tenant yet: create one with `winstar tenant create NAME`")
        raise WinstarError("several tenants exist: say which with --tenant")

    def create_tenant(self, name: str) -> Tenant:
        """A new tenant; its name must be free."""
        name = clean_name(name, "a tenant")
        if self.session.scalars(sa.select(Tenant).where(Tenant.name == name)).first():
            raise Conflict(f"a tenant named {name!r} already exists")
        tenant = Tenant(name=name, created_time=now_ms())
        self.session.add(tenant)
        self.session.flush()
        return tenant

    def list_tenants(self) -> list[Tenant]:
        """Every tenant, by name."""
        return list(self.session.scalars(sa.select(Tenant).order_by(Tenant.name)))

    def create_customer(self, name: str, tenant: Tenant) -> Customer:
        """A new customer of ``tenant``; its name must be free in the tenant."""
        name = clean_name(name, "a customer")
        if self.session.scalars(
            sa.select(Customer).where(Customer.tenant_id == tenant.id, Customer.name == name)
        ).first():
            raise Conflict(f"a customer named {name!r} already exists in tenant {tenant.name!r}")
        customer = Customer(tenant_id=tenant.id, name=name, created_time=now_ms())
        self.session.add(customer)
        self.session.flush()
        return customer

    def find_customer(self, ref: str, tenant: Tenant) -> Customer:
        """The customer of ``tenant`` with id or name ``ref``."""
        uid = parse_uuid(ref)
        stmt = sa.select(Customer).where(
            Customer.tenant_id == tenant.id, Customer.id == uid if uid else Customer.name == ref
        )
        customer = self.session.scalars(stmt).first()
        if customer is None:
            raise NotFound(f"no customer {ref!r} in tenant {tenant.name!r}")
        return customer

    def create_role(self, name: str, tenant: Tenant, permissions: Iterable[str]) -> Role:
        """A new role of ``tenant`` granting ``permissions`` (``RESOURCE:OPERATION``; PE only)."""
        if self.edition != "pe":
            raise WinstarError("roles exist only on a PE cloud (this cloud is CE)")
        perms = sorted({parse_permission(p) for p in permissions})
        if not perms:
            raise WinstarError("a role needs at least one --permission RESOURCE:OPERATION")
        name = clean_name(name, "a role")
        if self.session.scalars(
            sa.select(Role).where(Role.tenant_id == tenant.id, Role.name == name)
        ).first():
            raise Conflict(f"a role named {name!r} already exists in tenant {tenant.name!r}")
        role = Role(tenant_id=tenant.id, name=name, permissions=perms, created_time=now_ms())
        self.session.add(role)
        self.session.flush()
        return role

    def find_role(self, ref: str, tenant: Tenant) -> Role:
        """The role of ``tenant`` with id or name ``ref``."""
        uid = parse_uuid(ref)
        stmt = sa.select(Role).where(Role.tenant_id == tenant.id, Role.id == uid if uid else Role.name == ref)
        role = self.session.scalars(stmt).first()
        if role is None:
            raise NotFound(f"no role {ref!r} in tenant {tenant.name!r}")
        return role

    def create_user(
        self,
        email: str,
        tenant: Tenant,
        authority: str,
        customer: Customer | None = None,
        roles: Iterable[Role] = (),
    ) -> User:
        """A new user of ``tenant`` (roles on a PE cloud only); every edge of the tenant hears of it."""
        authority = authority.upper()
        if authority not in AUTHORITIES:
            raise WinstarError(f"authority must be one of {', '.join(AUTHORITIES)}")
        if authority == "CUSTOMER_USER" and customer is None:
            raise WinstarError("a CUSTOMER_USER needs --customer")
        roles = list(roles)
        if roles and self.edition != "pe":
            raise WinstarError("roles exist only on a PE cloud (this cloud is CE)")
        email = email.strip()
        if "@" not in email:
            raise WinstarError(f"{email!r} is not an email address")
        if len(email) > MAX_NAME:
            raise WinstarError(
                f"an email address may be at most {MAX_NAME} characters, this one has {len(email)}"
            )
        if self.session.scalars(sa.select(User).where(User.email == email)).first():
            raise Conflict(f"a user with email {email!r} already exists")
        now = now_ms()
        user = User(
            tenant_id=tenant.id,
            email=email,
            authority=authority,
            customer_id=customer.id if customer else None,
            permissions=[],
            created_time=now,
            updated_time=now,
        )
        self.session.add(user)
        self.session.flush()
        for role in roles:
            self.session.add(UserRole(user_id=user.id, role_id=role.id))
        self.session.flush()
        self._user_changed(user)
        return user

    def user_roles(self, user: User) -> list[Role]:
        """The roles of ``user``, by name."""
        stmt = sa.select(Role).join(UserRole, UserRole.role_id == Role.id).where(UserRole.user_id == user.id)
        return list(self.session.scalars(stmt.order_by(Role.name)))

    def user_permissions(self, user: User) -> list[str]:
        """The permissions ``user``'s roles grant, sorted."""
        return sorted({p for role in self.user_roles(user) for p in role.permissions})

    def user_info(self, user: User) -> pb.UserInfo:
        """``user`` as an edge receives it, with the permissions of its roles."""
        return pb.UserInfo(
            id=str(user.id),
            email=user.email,
            authority=user.authority,
            customer_id=str(user.customer_id) if user.customer_id else "",
            permissions=self.user_permissions(user),
            tenant_id=str(user.tenant_id),
        )

    def tenant_users(self, tenant_id: uuid.UUID) -> list[User]:
        """The users of tenant ``tenant_id``, by email."""
        return list(
            self.session.scalars(sa.select(User).where(User.tenant_id == tenant_id).order_by(User.email))
        )

    def _user_changed(self, user: User) -> None:
        body = self.user_info(user).SerializeToString()
        for edge_id in self.session.scalars(sa.select(Edge.id).where(Edge.tenant_id == user.tenant_id)):
            self.outbox.downlink(
                edge_id, OutboxEvent(user.tenant_id, USER_EVENT_TYPE, UPDATED, user.id, body)
            )
