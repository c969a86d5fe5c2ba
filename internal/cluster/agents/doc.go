// Package agents runs one membership agent per host of a local cluster
// (internal/cluster), as `tutti up` does: every host of the cluster is then
// a member of the process table, named host-<id>. It is a separate package
// because membership's own tests use internal/cluster. It is not API:
// only tutti up and tests may use it.
package agents
