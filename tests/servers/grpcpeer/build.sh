#!/bin/sh
# Builds the grpc-go peer into $1 (a directory; also holds the GOPATH, and the build cache
# unless GOCACHE names one, e.g. shared between test binaries):
# stubs generated from demo.proto by protoc-gen-go and protoc-gen-go-grpc, compiled in GOPATH
# mode against Debian's packaged Go libraries (no network). Prints the binary's path.
set -eu
out=$(realpath "${1:?usage: build.sh OUT_DIR}")
src=$(dirname "$(realpath "$0")")
pkg="$out/gopath/src/grpcpeer"
rm -rf "$pkg"
mkdir -p "$pkg"
cp "$src/main.go" "$pkg/"
protoc --proto_path="$src" --go_out="$out/gopath/src" --go-grpc_out="$out/gopath/src" "$src/demo.proto"
cd "$pkg"
GO111MODULE=off GOFLAGS= GOPATH="$out/gopath:/usr/share/gocode" GOCACHE="${GOCACHE:-$out/gocache}" \
    go build -o "$out/grpcpeer" .
echo "$out/grpcpeer"
