package service

// SetStartGroupHook makes StartHost call fn before starting each of its
// replicas; an error from fn fails StartHost there, as a crash between two
// replicas' first starts would leave the host. nil removes the hook.
func SetStartGroupHook(fn func(host, memnode uint64) error) { startGroupHook = fn }
