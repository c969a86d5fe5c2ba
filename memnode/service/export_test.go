package service

// SetStartGroupHook makes StartHost call fn before starting each of its
// replicas; an error from fn fails StartHost there, as a crash between two
// replicas' first starts would leave the host. nil removes the hook.
func SetStartGroupHook(fn func(host, memnode uint64) error) { startGroupHook = fn }

// SetFirstBootHook makes a booting host call fn(host) once it has decided
// that its empty log engine is the cluster's first boot, before it records
// the booting hosts and bootstraps: false makes it decide again later, as
// if it had crashed just before. nil removes the hook.
func SetFirstBootHook(fn func(host uint64) bool) { firstBootHook = fn }
