#!/usr/bin/env bash
# Regenerates the Go code under api/ from the .proto files, or checks it.
#   scripts/proto.sh          regenerate (the one command to run after editing api/)
#   scripts/proto.sh check    buf lint + fail if the committed generated code is stale
# The tools are pinned here and built from the Go module proxy into .bin/.
set -euo pipefail
cd "$(dirname "$0")/.."
BUF_VERSION=v1.75.0
PROTOC_GEN_GO_VERSION=v1.36.12   # keep equal to google.golang.org/protobuf in go.mod
PROTOC_GEN_GO_GRPC_VERSION=v1.6.1
BIN="$PWD/.bin"
mkdir -p "$BIN"
install_tool() { # pkg version name
  local stamp="$BIN/.$3-$2"
  if [ ! -x "$BIN/$3" ] || [ ! -f "$stamp" ]; then
    GOBIN="$BIN" GOFLAGS=-mod=mod go install "$1@$2"
    rm -f "$BIN/.$3-"*; touch "$stamp"
  fi
}
install_tool github.com/bufbuild/buf/cmd/buf "$BUF_VERSION" buf
install_tool google.golang.org/protobuf/cmd/protoc-gen-go "$PROTOC_GEN_GO_VERSION" protoc-gen-go
install_tool google.golang.org/grpc/cmd/protoc-gen-go-grpc "$PROTOC_GEN_GO_GRPC_VERSION" protoc-gen-go-grpc
export PATH="$BIN:$PATH"

generate() { # out-dir
  find "$1" -name '*.pb.go' -delete
  buf generate -o "$1"
}

case "${1:-generate}" in
generate)
  buf lint
  generate .
  ;;
check)
  buf lint
  tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
  buf generate -o "$tmp"
  # Compare the set of generated files and their contents with what is committed.
  if ! diff -r -q -x '*.proto' "$tmp/api" api >/dev/null; then
    diff -r -q -x '*.proto' "$tmp/api" api >&2 || true
    echo "proto: generated code under api/ is stale; run scripts/proto.sh and commit the result" >&2
    exit 1
  fi
  echo "proto: buf lint ok, generated code up to date"
  ;;
*) echo "usage: $0 [generate|check]" >&2; exit 2 ;;
esac
