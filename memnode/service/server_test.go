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

// fakeProposer answers every proposal with an OK vote and counts them.
type fakeProposer struct{ proposed int }

func (f *fakeProposer) ProposeAsync(_ uint64, _ []byte, done func([]byte, error)) {
	f.proposed++
	done(memnode.AppendResult(nil, &memnode.Result{Vote: memnode.VoteOK, FailedCompare: -1}), nil)
}
func (f *fakeProposer) ReadAsync(uint64, []byte, func([]byte, error)) {}
func (f *fakeProposer) Leader(uint64) uint64                          { return 1 }

// A Prepare whose participants are missing, repeated, leave out the
// memnode it is sent to or name a memnode the host does not know would
// wedge the tid in doubt (recovery asks exactly those memnodes, and cannot
// reach one that does not exist): refused before anything is proposed.
// An unknown participant is answered UNAVAILABLE (retry-safe: the host's
// directory may be behind a memnode just added).
func TestPrepareParticipantsValidated(t *testing.T) {
	for _, c := range []struct {
		parts []uint64
		ok    bool
		want  tuttipb.Status // when not ok; INVALID if unset
	}{
		{nil, false, 0},
		{[]uint64{1, 2}, false, 0}, // without memnode 0
		{[]uint64{0, 1, 0}, false, 0},
		{[]uint64{1, 0}, true, 0},
		{[]uint64{0}, true, 0},
		{[]uint64{0, 7}, false, tuttipb.Status_STATUS_UNAVAILABLE}, // no memnode 7
	} {
		fp := &fakeProposer{}
		s := newServer(1, map[uint64]string{1: "a:1", 2: "b:2"},
			[]MemnodeSpec{{ID: 0, Replicas: []uint64{1}}, {ID: 1, Replicas: []uint64{2}}},
			memnode.DefaultConfig(), WallClock, zerolog.Nop(), fp)
		ob := newOutbox()
		s.handle(&tuttipb.Request{Id: 9, Memnode: 0, Kind: tuttipb.Kind_KIND_PREPARE, Tid: &tuttipb.Tid{Client: 1, Seq: 1, Time: 1},
			Participants: c.parts, Writes: []*tuttipb.Write{{Addr: 8, Data: []byte("x")}}}, ob)
		if len(ob.mu.pending) != 1 {
			t.Fatalf("participants %v: %d responses", c.parts, len(ob.mu.pending))
		}
		r := ob.mu.pending[0]
		want, proposed := tuttipb.Status_STATUS_INVALID, 0
		if c.want != 0 {
			want = c.want
		}
		if c.ok {
			want, proposed = tuttipb.Status_STATUS_OK, 1
		}
		if r.GetStatus() != want || r.GetId() != 9 || fp.proposed != proposed {
			t.Errorf("participants %v: status %v (%s), %d proposed; want %v, %d", c.parts, r.GetStatus(), r.GetError(), fp.proposed, want, proposed)
		}
	}
}
