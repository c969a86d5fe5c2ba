package client

// QueueRetriesFromFailure returns how many of q's enqueues lost a race and
// retried from the state the failed compare answered, without reading it.
func QueueRetriesFromFailure(q *Queue) int64 { return q.stateFromFailure.Load() }
