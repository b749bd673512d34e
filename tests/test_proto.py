"""The committed generated code matches proto/ (regenerate with scripts/proto_codegen.sh)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from google.protobuf import descriptor_pb2

from winstar_core.transport.pb import sync_pb2, sync_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]


def test_generated_code_is_fresh(tmp_path):
    out = tmp_path / "set.pb"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{ROOT / 'proto'}",
            f"--descriptor_set_out={out}",
            str(ROOT / "proto/winstar/edge/v1/sync.proto"),
        ],
        check=True,
    )
    fresh = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file[0]
    _drop_json_names(fresh.message_type)  # protoc fills them in; the runtime's copy leaves them out
    committed = descriptor_pb2.FileDescriptorProto()
    sync_pb2.DESCRIPTOR.CopyToProto(committed)
    assert committed == fresh, "proto/ changed: run scripts/proto_codegen.sh and commit the result"
    assert hasattr(sync_pb2_grpc, "EdgeSyncStub") and hasattr(sync_pb2_grpc, "EdgeSyncServicer")


def _drop_json_names(messages) -> None:
    for message in messages:
        for f in message.field:
            f.ClearField("json_name")
        _drop_json_names(message.nested_type)
