package service

import (
	"errors"
	"fmt"

	"github.com/tutti-gcs/tutti/internal/bufpool"
	"github.com/tutti-gcs/tutti/memnode"
	"github.com/tutti-gcs/tutti/replication"
)

// machine adapts a memnode.Memnode to replication.StateMachine. Commands are
// memnode entries in memnode's encoding; results are memnode results in
// memnode's encoding. The replication worker owns it; nothing else touches it.
type machine struct {
	m *memnode.Memnode
	// w receives the ranges applied entries wrote (watch.go); nil: none.
	w       *watchTarget
	written []wrange      // scratch, reused across Apply calls
	entry   memnode.Entry // scratch: every command decodes into it
	snapBuf []byte        // the last snapshot's buffer, reused by the next
}

var _ replication.StateMachine = (*machine)(nil)

func (s *machine) Apply(cmds []replication.Command) [][]byte {
	out := make([][]byte, len(cmds))
	written, index := s.written[:0], uint64(0)
	for i := range cmds {
		var r memnode.Result
		watched := s.w.watching(cmds[i].Index)
		e := &s.entry // Apply keeps no reference to it
		err := memnode.DecodeEntryReuse(e, cmds[i].Data)
		switch {
		case errors.Is(err, memnode.ErrVersion):
			// An entry of a format this binary does not know, proposed
			// by an upgraded leader (say, one carrying fences, version
			// 4, reaching an older host). Applying nothing here while
			// upgraded replicas apply it would make the replicas differ
			// for good; stop instead, as etcd does on an entry type it
			// does not know. Restarted with a binary that knows the
			// format, the host applies it from its log.
			panic(fmt.Sprintf("tutti: memnode: log entry %d has a format this binary does not know (%v): upgrade this host", cmds[i].Index, err))
		case err != nil:
			// A command that does not decode (and is not of a newer
			// format) was never produced by any version; every replica
			// refuses it alike, so applying nothing keeps them identical.
			r = memnode.Result{FailedCompare: -1, Err: fmt.Errorf("%w: %v", memnode.ErrInvalid, err)}
		default:
			n := len(written)
			if watched {
				// What the in-doubt tids write, learned before they commit.
				for _, tid := range e.Commits {
					written = s.appendInDoubtWrites(written, tid)
				}
				if e.Kind == memnode.KindCommit {
					written = s.appendInDoubtWrites(written, e.TID)
					for _, tid := range e.More {
						written = s.appendInDoubtWrites(written, tid)
					}
				}
			}
			e.NoReads = cmds[i].NoResult
			r = s.m.Apply(e)
			switch {
			case !watched || r.Err != nil:
				written = written[:n]
			case e.Kind == memnode.KindExec && r.Vote == memnode.VoteOK:
				written = appendWrites(written, e.Op.Writes)
				written = appendAppends(written, e.Op.Appends, r.Appended)
			}
			if len(written) > n {
				index = cmds[i].Index
			}
		}
		if !cmds[i].NoResult {
			out[i] = memnode.AppendResult(nil, &r)
		}
	}
	if len(written) > 0 {
		// s.m is the memory as of index: subscribers with data copy the
		// bytes from it.
		s.w.publish(index, written, s.m)
	}
	s.written = written[:0]
	return out
}

func (s *machine) appendInDoubtWrites(written []wrange, tid memnode.TID) []wrange {
	if ws, ok := s.m.InDoubtWrites(tid); ok {
		written = appendWrites(written, ws)
	}
	return written
}

// Query answers a read-only minitransaction or an inspection
// (memnode.AnswerInto). An answer with read data is built in a buffer of
// bufpool.Pool, which the session's outbox puts back once the response is
// sent (readBuf); answers that go elsewhere are left to the collector.
func (s *machine) Query(q []byte) []byte { return s.m.AnswerInto(q, readBuf) }

// readBuf returns an empty buffer of capacity at least n from bufpool.Pool.
func readBuf(n int) []byte { return (*bufpool.Pool.Get(n))[:0] }

// Snapshot encodes the memnode into the buffer of the previous snapshot:
// the host keeps no reference to it (replication.StateMachine).
func (s *machine) Snapshot() ([]byte, error) {
	s.snapBuf = s.m.AppendSnapshot(s.snapBuf[:0])
	return s.snapBuf, nil
}

func (s *machine) Restore(data []byte) error {
	err := s.m.Restore(data)
	s.w.reset() // the state changed wholesale: watchers re-read
	return err
}
