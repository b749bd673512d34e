"""What the cloud tells an edge about itself when it connects."""

from __future__ import annotations

from winstar_core.services.cloud import CloudService
from winstar_core.store.models import Edge, Tenant
from winstar_core.transport.pb import sync_pb2 as pb

PROTOCOL_VERSION = 1


def edge_config(cloud: CloudService, edge: Edge) -> pb.EdgeConfig:
    tenant = cloud.session.get(Tenant, edge.tenant_id)
    return pb.EdgeConfig(
        edge_id=str(edge.id),
        name=edge.name,
        tenant_id=str(edge.tenant_id),
        tenant_name=tenant.name if tenant else "",
        customer_id=str(edge.customer_id) if edge.customer_id else "",
        edition=cloud.edition,
    )


def edge_welcome(cloud: CloudService, edge: Edge, applied_uplink_seq: int = 0) -> pb.Welcome:
    return pb.Welcome(
        edge=edge_config(cloud, edge),
        users=[cloud.user_info(u) for u in cloud.tenant_users(edge.tenant_id)],
        applied_uplink_seq=applied_uplink_seq,
        protocol_version=PROTOCOL_VERSION,
        entity_types=[
            pb.EntityTypeInfo(type=t.name, schema_version=t.schema_version, plugin=cloud.types.owner(t.name))
            for t in cloud.types
        ],
    )
