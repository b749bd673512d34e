#!/usr/bin/env bash
# Regenerates winstar_core/transport/pb from proto/. The generated files are committed;
# tests/test_proto.py fails when they are stale.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/winstar_core/transport/pb}
python=${PYTHON:-python3}
mkdir -p "$out"
"$python" -m grpc_tools.protoc -I "$root/proto" \
  --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" \
  "$root/proto/winstar/edge/v1/sync.proto"
# protoc mirrors the proto package as folders; flatten into one package with relative imports.
mv "$out/winstar/edge/v1/"sync_pb2* "$out/"
rm -rf "$out/winstar"
sed -i 's/^from winstar\.edge\.v1 import sync_pb2/from . import sync_pb2/' "$out/sync_pb2_grpc.py"
touch "$out/__init__.py"
