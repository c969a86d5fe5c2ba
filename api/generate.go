// Package api holds the .proto files of every tutti RPC and, in tuttipb, the
// Go code generated from them. The generated code is committed; run
// `go generate ./api` with the pinned generators (see .ci/protogen) to
// reproduce it byte for byte.
package api

//go:generate bash ../.ci/protogen
