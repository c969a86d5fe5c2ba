package gcs

// DeliveryCounts returns how often g's delivery took order-log records
// from watch event data (without a read) and how often it read the log.
func DeliveryCounts(g *Group) (fromEvents, logReads int64) {
	return g.evDelivered.Load(), g.logReads.Load()
}

// SetWatchData sets whether groups joined from now on ask their watch for
// the written bytes, and returns a function restoring the previous value.
func SetWatchData(on bool) (restore func()) {
	old := noWatchData.Swap(!on)
	return func() { noWatchData.Store(old) }
}
