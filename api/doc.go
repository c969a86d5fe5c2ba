// Package api holds the .proto files of every tutti RPC (tutti/v1/) and, in
// tuttipb, the Go code generated from them. Programs in other languages build
// their clients from the .proto files.
//
// The generated code is committed; `go generate ./api` reproduces it byte for
// byte with the pinned generators (see .ci/protogen). Enum values and fields
// are only ever appended. The files live under tutti/v1/ so the paths they
// register in the protobuf registry never collide with other packages' (etcd's
// raftpb registers plain "raft.proto").
//
// This package holds no code and must not: only wire types.
package api
