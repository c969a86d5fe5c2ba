package service

import (
	"errors"
	"fmt"
	"testing"

	"github.com/rs/zerolog"
	"github.com/tutti-gcs/tutti/api/tuttipb"
	"github.com/tutti-gcs/tutti/memnode"
	"github.com/tutti-gcs/tutti/replication"
)

func testServer() *Server {
	specs := []MemnodeSpec{{ID: 0, Replicas: []uint64{1, 2, 3}}}
	hosts := map[uint64]string{1: "a:1", 2: "b:2", 3: "c:3"}
	return newServer(1, hosts, specs, memnode.DefaultConfig(), WallClock, zerolog.Nop(), nil)
}

// Every replication error maps to a status whose retry rule is right: a
// request that was never proposed must not be reported as an unknown outcome,
// and one that may have been applied must never be reported as retry-safe.
func TestResponseMapsReplicationErrors(t *testing.T) {
	s := testServer()
	cases := []struct {
		err  error
		want tuttipb.Status
	}{
		{&replication.NotLeaderError{Group: 0, Leader: 2}, tuttipb.Status_STATUS_NOT_LEADER},
		{fmt.Errorf("%w: raft refused", replication.ErrDropped), tuttipb.Status_STATUS_UNAVAILABLE},
		{replication.ErrStopped, tuttipb.Status_STATUS_UNAVAILABLE},
		{replication.ErrUnknownGroup, tuttipb.Status_STATUS_UNKNOWN_MEMNODE},
		{replication.ErrTooLarge, tuttipb.Status_STATUS_INVALID},
		{replication.ErrUnknownOutcome, tuttipb.Status_STATUS_UNKNOWN_OUTCOME},
		{errors.New("anything else"), tuttipb.Status_STATUS_UNKNOWN_OUTCOME},
	}
	for _, c := range cases {
		r := s.response(7, 0, nil, c.err)
		if r.GetStatus() != c.want || r.GetId() != 7 {
			t.Errorf("%v: status %v id %d, want %v id 7", c.err, r.GetStatus(), r.GetId(), c.want)
		}
	}
	if r := s.response(7, 0, nil, &replication.NotLeaderError{Group: 0, Leader: 2}); r.GetLeaderAddr() != "b:2" {
		t.Errorf("leader hint %q, want b:2", r.GetLeaderAddr())
	}
}

// The outcome a participant reports for Commit/Abort/AbortUnlessVoted reaches
// the wire; recovery depends on it. An expired tid's answer carries no vote.
func TestResponseCarriesOutcome(t *testing.T) {
	s := testServer()
	for _, c := range []struct {
		vote memnode.Vote
		o    memnode.Outcome
		want tuttipb.Outcome
	}{
		{memnode.VoteBadForced, memnode.OutcomeUnknown, tuttipb.Outcome_OUTCOME_UNKNOWN},
		{memnode.VoteOK, memnode.OutcomeCommitted, tuttipb.Outcome_OUTCOME_COMMITTED},
		{memnode.VoteBadForced, memnode.OutcomeAborted, tuttipb.Outcome_OUTCOME_ABORTED},
		{0, memnode.OutcomeExpired, tuttipb.Outcome_OUTCOME_EXPIRED},
	} {
		res := memnode.AppendResult(nil, &memnode.Result{Vote: c.vote, FailedCompare: -1, Outcome: c.o})
		r := s.response(1, 0, res, nil)
		if r.GetStatus() != tuttipb.Status_STATUS_OK || r.GetOutcome() != c.want || r.GetVote() != tuttipb.Vote(c.vote) {
			t.Errorf("outcome %v: got status %v vote %v outcome %v, want %v", c.o, r.GetStatus(), r.GetVote(), r.GetOutcome(), c.want)
		}
	}
}
