package memnode

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"reflect"
	"testing"
)

// TestReplicasAgree applies one random entry sequence to several replicas:
// one applies the entries directly, one through the log encoding, and one
// is replaced at a random point by a fresh Memnode restored from its
// snapshot. Every entry must give identical results everywhere, and the
// replicas must end with byte-identical snapshots. A flat byte array serves
// as the oracle for the data: reads of OK votes and the final memory must
// match it.
func TestReplicasAgree(t *testing.T) {
	for seed := uint64(1); seed <= 20; seed++ {
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			runReplicas(t, seed, 1500)
		})
	}
}

type gen struct {
	rng   *rand.Rand
	cfg   Config
	clock int64
	tids  []TID
}

// entry makes the next entry; inDoubt (the same at every replica) lets it
// resolve prepared tids often enough that locks come and go.
func (g *gen) entry(inDoubt []InDoubtTx) Entry {
	g.clock += g.rng.Int64N(120)
	e := Entry{Now: g.clock + g.rng.Int64N(200) - 100} // leaders' clocks disagree
	switch p := g.rng.IntN(100); {
	case p < 30:
		e.Kind = KindExec
	case p < 60:
		e.Kind = KindPrepare
	case p < 78:
		e.Kind = KindCommit
	case p < 90:
		e.Kind = KindAbort
	case p < 99:
		e.Kind = KindAbortUnlessVoted
	default:
		e.Kind = Kind(g.rng.IntN(8)) // sometimes unknown
	}
	if len(g.tids) == 0 || g.rng.IntN(3) == 0 {
		tid := TID{Client: g.rng.Uint64N(3) + 1, Seq: uint64(len(g.tids)) + 1, Time: g.clock - g.rng.Int64N(g.cfg.Horizon/2)}
		if g.rng.IntN(30) == 0 {
			tid.Time = g.clock - 2*g.cfg.Horizon // expired
		}
		if g.rng.IntN(50) == 0 {
			tid.Time = g.clock + 2*g.cfg.Horizon // too far ahead: invalid
		}
		g.tids = append(g.tids, tid)
	}
	e.TID = g.tids[len(g.tids)-1-min(len(g.tids)-1, g.rng.IntN(8))]
	if e.Kind != KindExec && e.Kind != KindPrepare && len(inDoubt) > 0 && g.rng.IntN(3) > 0 {
		e.TID = inDoubt[g.rng.IntN(len(inDoubt))].TID
	}
	if e.Kind == KindExec || e.Kind == KindPrepare || g.rng.IntN(40) == 0 {
		e.Op = g.op()
		e.Participants = []uint64{1, g.rng.Uint64N(5) + 2}
	}
	return e
}

var hotspots = []uint64{0, 100, pageSize - 6, 2*pageSize + 500}

func (g *gen) op() Op {
	var op Op
	n := g.rng.IntN(5)
	for range n {
		addr := hotspots[g.rng.IntN(len(hotspots))] + g.rng.Uint64N(12)
		l := g.rng.IntN(8) + 1
		if g.rng.IntN(40) == 0 {
			l = g.rng.IntN(5000) + 1 // spans pages
		}
		if g.rng.IntN(150) == 0 {
			l = 0 // invalid
		}
		if g.rng.IntN(150) == 0 {
			addr = g.cfg.Size - 2 // out of range unless l <= 2
		}
		data := make([]byte, l)
		for i := range data {
			data[i] = byte('a' + g.rng.IntN(3))
		}
		switch g.rng.IntN(3) {
		case 0:
			// Compare against what is likely there: zeros or a write.
			if g.rng.IntN(2) == 0 {
				clear(data)
			}
			op.Compares = append(op.Compares, Compare{Addr: addr, Data: data})
		case 1:
			op.Reads = append(op.Reads, Read{Addr: addr, Len: uint32(l)})
		default:
			op.Writes = append(op.Writes, Write{Addr: addr, Data: data})
		}
	}
	return op
}

// oracle is the expected memory, and the writes of prepared tids.
type oracle struct {
	mem      []byte
	prepared map[TID][]Write
}

func (o *oracle) read(rs []Read) [][]byte {
	var out [][]byte
	for _, r := range rs {
		out = append(out, bytes.Clone(o.mem[r.Addr:r.Addr+uint64(r.Len)]))
	}
	return out
}

func (o *oracle) write(ws []Write) {
	for _, w := range ws {
		copy(o.mem[w.Addr:], w.Data)
	}
}

func runReplicas(t *testing.T, seed uint64, steps int) {
	cfg := Config{Size: 4 * pageSize, MaxItemBytes: 6000, MaxItems: 6, Horizon: 4000}
	g := &gen{rng: rand.New(rand.NewPCG(seed, 0)), cfg: cfg, clock: 1_000_000}
	var reps [3]*Memnode
	for i := range reps {
		m, err := New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		reps[i] = m
	}
	o := &oracle{mem: make([]byte, cfg.Size), prepared: map[TID][]Write{}}
	restoreAt := g.rng.IntN(steps)
	votes := map[Vote]int{}
	defer func() { t.Logf("votes %v stats %+v", votes, reps[0].Stats()) }()
	for step := range steps {
		if step == restoreAt {
			fresh, _ := New(cfg)
			if err := fresh.Restore(reps[2].Snapshot()); err != nil {
				t.Fatalf("step %d: restore: %v", step, err)
			}
			reps[2] = fresh
		}
		e := g.entry(reps[0].InDoubt())
		enc := AppendEntry(nil, &e)
		dec, err := DecodeEntry(enc)
		if err != nil {
			t.Fatalf("step %d: decode: %v", step, err)
		}
		// Replica 1 applies as a replica nobody waits on does: without
		// building the reads. Its state must not differ (snapshots below).
		dec.NoReads = true
		r0 := reps[0].Apply(&e)
		r1 := reps[1].Apply(&dec)
		r2 := reps[2].Apply(&e)
		b0 := AppendResult(nil, &r0)
		r0n := r0
		r0n.Reads = nil
		if r1.Reads != nil || !bytes.Equal(AppendResult(nil, &r0n), AppendResult(nil, &r1)) || !bytes.Equal(b0, AppendResult(nil, &r2)) {
			t.Fatalf("step %d: %+v: results differ:\n%+v\n%+v\n%+v", step, e, r0, r1, r2)
		}
		votes[r0.Vote]++
		checkOracle(t, step, o, reps[0], &e, &r0)
		if step%100 == 0 {
			checkInvariants(t, reps[0])
		}
	}
	s := reps[0].Snapshot()
	for i := 1; i < len(reps); i++ {
		if !bytes.Equal(s, reps[i].Snapshot()) {
			t.Fatalf("replica %d snapshot differs", i)
		}
		if !reflect.DeepEqual(reps[0].InDoubt(), reps[i].InDoubt()) || reps[0].Stats() != reps[i].Stats() {
			t.Fatalf("replica %d in-doubt or stats differ", i)
		}
	}
	checkInvariants(t, reps[0])
	got := make([]byte, cfg.Size)
	reps[0].mem.readInto(got, 0)
	if !bytes.Equal(got, o.mem) {
		t.Fatal("memory differs from the oracle")
	}
	// The sequence must exercise every vote, or the test proves little.
	for _, v := range []Vote{VoteOK, VoteBadLock, VoteBadForced, VoteBadCmp} {
		if votes[v] == 0 {
			t.Errorf("no %v vote in %d steps: %v", v, steps, votes)
		}
	}
}

// checkOracle checks r's reads against the oracle and updates it.
func checkOracle(t *testing.T, step int, o *oracle, m *Memnode, e *Entry, r *Result) {
	t.Helper()
	if r.Err != nil {
		return
	}
	switch e.Kind {
	case KindExec:
		if r.Vote == VoteOK {
			if want := o.read(e.Op.Reads); !reflect.DeepEqual(r.Reads, want) {
				t.Fatalf("step %d: exec reads %q, want %q", step, r.Reads, want)
			}
			o.write(e.Op.Writes)
		}
	case KindPrepare:
		if _, dup := o.prepared[e.TID]; r.Vote == VoteOK && !dup && r.Outcome == OutcomeUnknown {
			if want := o.read(e.Op.Reads); !reflect.DeepEqual(r.Reads, want) {
				t.Fatalf("step %d: prepare reads %q, want %q", step, r.Reads, want)
			}
			o.prepared[e.TID] = cloneWrites(e.Op.Writes)
		}
	case KindCommit, KindAbort:
		ws, ok := o.prepared[e.TID]
		if !ok {
			return
		}
		want := OutcomeAborted
		if e.Kind == KindCommit {
			want = OutcomeCommitted
			o.write(ws)
		}
		if r.Outcome != want {
			t.Fatalf("step %d: %v of in-doubt tid %v: outcome %v", step, e.Kind, e.TID, r.Outcome)
		}
		delete(o.prepared, e.TID)
	}
	if len(o.prepared) != m.Stats().InDoubt {
		t.Fatalf("step %d: %d in doubt, oracle has %d", step, m.Stats().InDoubt, len(o.prepared))
	}
}
