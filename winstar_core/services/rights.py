"""What a signed-in user of the console or the REST API may see and change: the one rule, which
every console operation asks (winstar_core/console/ops.py).

- A **tenant administrator** sees and changes everything of their tenant, and nothing else.
- A **customer user** sees only the edges and entities of their customer. They may not change
  anything, unless the cloud is PE and one of their roles grants ``RESOURCE:WRITE`` (``ALL``
  matches any resource or operation, as on an edge): then they may change that resource, still
  only within their customer (an entity they create belongs to their customer).
- Users, customers and tokens of others are a tenant administrator's business.

What a user may not see is answered exactly as what does not exist (:class:`NotFound`, 404), so
that ids of another tenant or customer give nothing away; what they see but may not change is a
:class:`PermissionDenied` (403).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from winstar_core.errors import NotFound, PermissionDenied

TENANT_ADMIN = "TENANT_ADMIN"
CUSTOMER_USER = "CUSTOMER_USER"
#: the resource an edge's own operations (assign, sync, retry, secrets) need
EDGE_RESOURCE = "EDGE"


@dataclass(frozen=True)
class Principal:
    """A signed-in user, as the console's rules see them."""

    user_id: uuid.UUID
    email: str
    tenant_id: uuid.UUID
    authority: str
    customer_id: uuid.UUID | None
    permissions: frozenset[str]
    edition: str

    @property
    def admin(self) -> bool:
        """Whether the user is a tenant administrator."""
        return self.authority == TENANT_ADMIN

    def sees(self, tenant_id: uuid.UUID, customer_id: uuid.UUID | None) -> bool:
        """Whether a row of ``tenant_id`` owned by ``customer_id`` is visible."""
        if tenant_id != self.tenant_id:
            return False
        return self.admin or (customer_id is not None and customer_id == self.customer_id)

    def may_write(self, resource: str) -> bool:
        """Whether the user may change rows of ``resource`` they see."""
        if self.admin:
            return True
        if self.edition != "pe":
            return False
        wanted = {f"{resource}:WRITE", f"{resource}:ALL", "ALL:WRITE", "ALL:ALL"}
        return bool(self.permissions & wanted)

    def require_write(self, resource: str, what: str) -> None:
        """:class:`PermissionDenied` unless :meth:`may_write`."""
        if not self.may_write(resource):
            need = (
                "a tenant administrator"
                if self.edition != "pe"
                else f"a tenant administrator or a role granting {resource}:WRITE"
            )
            raise PermissionDenied(f"{self.email} may not {what} ({self.edition.upper()}: needs {need})")

    def require_admin(self, what: str) -> None:
        """:class:`PermissionDenied` unless the user is a tenant administrator."""
        if not self.admin:
            raise PermissionDenied(f"{self.email} may not {what} (needs a tenant administrator)")

    def visible(self, row: object, what: str, ref: object) -> None:
        """:class:`NotFound` (worded as for a row that does not exist) unless ``row`` is visible."""
        tenant_id = getattr(row, "tenant_id", None)
        if tenant_id is None or not self.sees(tenant_id, getattr(row, "customer_id", None)):
            raise NotFound(f"no {what} {str(ref)!r}")
