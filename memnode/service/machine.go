package service

import (
	"fmt"

	"github.com/tutti-gcs/tutti/memnode"
	"github.com/tutti-gcs/tutti/replication"
)

// machine adapts a memnode.Memnode to replication.StateMachine. Commands are
// memnode entries in memnode's encoding; results are memnode results in
// memnode's encoding. The replication worker owns it; nothing else touches it.
type machine struct {
	m *memnode.Memnode
}

var _ replication.StateMachine = (*machine)(nil)

func (s *machine) Apply(cmds []replication.Command) [][]byte {
	out := make([][]byte, len(cmds))
	for i := range cmds {
		var r memnode.Result
		e, err := memnode.DecodeEntry(cmds[i].Data)
		if err != nil {
			// A command that does not decode was never produced by this
			// code; applying nothing keeps replicas identical.
			r = memnode.Result{FailedCompare: -1, Err: fmt.Errorf("%w: %v", memnode.ErrInvalid, err)}
		} else {
			r = s.m.Apply(&e)
		}
		out[i] = memnode.AppendResult(nil, &r)
	}
	return out
}

// Query answers a read-only minitransaction or an inspection (memnode.Answer).
func (s *machine) Query(q []byte) []byte { return s.m.Answer(q) }

func (s *machine) Snapshot() ([]byte, error) { return s.m.Snapshot(), nil }

func (s *machine) Restore(data []byte) error { return s.m.Restore(data) }
