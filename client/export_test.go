package client

import (
	"context"

	"github.com/tutti-gcs/tutti/api/tuttipb"
)

// QueueRetriesFromFailure returns how many of q's enqueues lost a race and
// retried from the state the failed compare answered, without reading it.
func QueueRetriesFromFailure(q *Queue) int64 { return q.stateFromFailure.Load() }

// ExecAs sends tx (on one memnode, with writes) as the one-phase attempt
// tid, as a request of that attempt delayed on its way to the leader would
// arrive, and returns the memnode's vote.
func ExecAs(ctx context.Context, c *Client, tid TID, tx *Tx) (tuttipb.Vote, error) {
	r, err := c.call(ctx, tx.split(nil)[0].request(tuttipb.Kind_KIND_EXEC, tid.wire(), nil))
	return r.GetVote(), err
}

// NewTID returns a fresh tid of c, as its next attempt would have.
func NewTID(c *Client) TID { return tidFromWire(c.newTid()) }
