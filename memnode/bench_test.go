package memnode

import (
	"fmt"
	"testing"
)

// benchOp is the paper's base workload item set: six 4-byte writes.
func benchOp() Op {
	op := Op{Writes: make([]Write, 6)}
	for i := range op.Writes {
		op.Writes[i] = Write{Addr: uint64(i) * 40_000, Data: []byte{1, 2, 3, byte(i)}}
	}
	return op
}

// BenchmarkApplyExec applies a one-phase Exec of six 4-byte writes, with no
// lock held and with other transactions in doubt holding locks elsewhere.
func BenchmarkApplyExec(b *testing.B) {
	for _, locked := range []int{0, 64} {
		b.Run(fmt.Sprintf("indoubt=%d", locked), func(b *testing.B) {
			m, err := New(Config{})
			if err != nil {
				b.Fatal(err)
			}
			for i := range locked {
				r := m.Apply(&Entry{Kind: KindPrepare, Now: 1, TID: TID{Client: 1, Seq: uint64(i), Time: 1}, Participants: []uint64{0, 1},
					Op: Op{Writes: []Write{{Addr: uint64(i)*40_000 + 8, Data: []byte("lock")}}}})
				if r.Vote != VoteOK {
					b.Fatalf("prepare: %+v", r)
				}
			}
			e := Entry{Kind: KindExec, Now: 2, Op: benchOp()}
			b.ReportAllocs()
			for b.Loop() {
				e.Now++
				if r := m.Apply(&e); r.Vote != VoteOK {
					b.Fatalf("exec: %+v", r)
				}
			}
		})
	}
}

func BenchmarkDecodeEntry(b *testing.B) {
	e := Entry{Kind: KindPrepare, Now: 1 << 60, TID: TID{Client: 12345, Seq: 678, Time: 1 << 60},
		Participants: []uint64{1, 2}, Op: benchOp()}
	e.Op.Compares = []Compare{{Addr: 8, Data: []byte("abcd")}}
	enc := AppendEntry(nil, &e)
	b.SetBytes(int64(len(enc)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := DecodeEntry(enc); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkSnapshot(b *testing.B) {
	for _, pages := range []int{16, 1024} {
		b.Run(fmt.Sprintf("pages=%d", pages), func(b *testing.B) {
			m, _ := New(Config{})
			for i := range pages {
				m.Apply(&Entry{Kind: KindExec, Now: 1, Op: Op{Writes: []Write{{Addr: uint64(i) * pageSize, Data: []byte("x")}}}})
			}
			b.ReportAllocs()
			for b.Loop() {
				s := m.Snapshot()
				b.SetBytes(int64(len(s)))
			}
		})
	}
}

// BenchmarkApplyTwoPhase applies what one participant of a cas2
// minitransaction sees at steady state: a Prepare of two compare-and-swaps
// that carries the commit of an earlier tid, decoded from its log encoding,
// and the encoding of the result. inflight is how many tids are in doubt
// meanwhile (under load, hundreds: the outstanding minitransactions and the
// decisions not yet carried); their words are spread over the bench's
// 50,000-word space as the cas2 workload spreads them.
func BenchmarkApplyTwoPhase(b *testing.B) {
	for _, inflight := range []uint64{1, 512} {
		b.Run(fmt.Sprintf("inflight=%d", inflight), func(b *testing.B) { benchTwoPhase(b, inflight) })
	}
}

func benchTwoPhase(b *testing.B, inflight uint64) {
	m, _ := New(Config{})
	seq := uint64(0)
	entry := func() []byte {
		seq++
		e := Entry{Kind: KindPrepare, Now: int64(seq), TID: TID{Client: 1, Seq: seq, Time: int64(seq)}, Participants: []uint64{0, 1}}
		for i := range uint64(2) {
			// 7919 is prime to 50,000: consecutive tids' words are
			// distinct (no BAD-LOCK) and scattered.
			addr := ((seq*2 + i) * 7919 % 50000) * 4
			e.Op.Compares = append(e.Op.Compares, Compare{Addr: addr, Data: []byte{0, 0, 0, 0}})
			e.Op.Writes = append(e.Op.Writes, Write{Addr: addr, Data: []byte{0, 0, 0, 0}})
		}
		if seq > inflight {
			e.Commits = []TID{{Client: 1, Seq: seq - inflight, Time: int64(seq - inflight)}}
		}
		return AppendEntry(nil, &e)
	}
	encs := make([][]byte, 4096)
	for i := range encs {
		encs[i] = entry()
	}
	var out []byte
	var e Entry
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if i == len(encs) {
			b.StopTimer()
			for j := range encs {
				encs[j] = entry()
			}
			i = 0
			b.StartTimer()
		}
		err := DecodeEntryReuse(&e, encs[i]) // as the service's apply loop does
		i++
		if err != nil {
			b.Fatal(err)
		}
		r := m.Apply(&e)
		if r.Vote != VoteOK {
			b.Fatalf("prepare: %+v", r)
		}
		out = AppendResult(out[:0], &r)
	}
}

// BenchmarkApplyInterleaved compares, per committed minitransaction, what
// the replicas of the embedded cluster apply for the base workload (an Exec
// of six words on one memnode, three replicas) and for cas2 (on each of two
// memnodes a Prepare of one or two compare-and-swaps carrying the commit of
// an earlier tid, three replicas each), decoded from their log encoding,
// with the replicas' states interleaved as in one process. With 256
// outstanding, a tid's Commit comes hundreds of entries after its Prepare,
// when the state it touches has left the cache; with 1 it is warm.
//
// A cas2/base throughput of 0.5 needs cas2 below twice base here, as in
// every other layer; see doc.go ("Cost of applying") for what it showed.
func BenchmarkApplyInterleaved(b *testing.B) {
	const (
		words    = 50_000
		replicas = 3
	)
	word := func(seq, i uint64) uint64 { return ((seq*6 + i) * 7919 % words) * 4 }
	b.Run("base", func(b *testing.B) {
		ms := make([]*Memnode, replicas)
		for i := range ms {
			ms[i], _ = New(Config{})
		}
		seq := uint64(0)
		var enc []byte
		runInterleaved(b, ms, func(r int) []byte {
			if r > 0 {
				return enc // the other replicas apply the same entry
			}
			seq++
			e := Entry{Kind: KindExec, Now: int64(seq)}
			for i := range uint64(6) {
				e.Op.Writes = append(e.Op.Writes, Write{Addr: word(seq, i), Data: []byte{1, 2, 3, byte(seq)}})
			}
			enc = AppendEntry(nil, &e)
			return enc
		})
	})
	for _, outstanding := range []int{1, 256} {
		b.Run(fmt.Sprintf("cas2/outstanding=%d", outstanding), func(b *testing.B) {
			ms := make([]*Memnode, 2*replicas) // memnode 0: ms[0:3], memnode 1: ms[3:6]
			for i := range ms {
				ms[i], _ = New(Config{})
			}
			seq := uint64(0)
			var (
				pending [2][]TID // per memnode: prepared, commit not yet carried
				encs    [2][]byte
			)
			runInterleaved(b, ms, func(r int) []byte {
				mn := r / replicas
				if r%replicas != 0 {
					return encs[mn]
				}
				if mn == 0 {
					seq++
				}
				tid := TID{Client: 1, Seq: seq, Time: int64(seq)}
				e := Entry{Kind: KindPrepare, Now: int64(seq), TID: tid, Participants: []uint64{0, 1}}
				n := 1 + (seq+uint64(mn))%2 // two words on one memnode, one on the other
				for i := range n {
					addr := word(seq, uint64(mn)*3+i)
					e.Op.Compares = append(e.Op.Compares, Compare{Addr: addr, Data: []byte{0, 0, 0, 0}})
					e.Op.Writes = append(e.Op.Writes, Write{Addr: addr, Data: []byte{0, 0, 0, 0}})
				}
				if len(pending[mn]) >= outstanding {
					e.Commits = []TID{pending[mn][0]}
					pending[mn] = pending[mn][1:]
				}
				pending[mn] = append(pending[mn], tid)
				encs[mn] = AppendEntry(nil, &e)
				return encs[mn]
			})
		})
	}
}

// runInterleaved applies, per iteration (one minitransaction), next(r) at
// every replica r in turn, decoding as the service's apply loop does and
// encoding the result. The entries are made ahead, outside the timer. The
// cas2 compares compare zeroes with zeroes: every Prepare votes OK.
func runInterleaved(b *testing.B, ms []*Memnode, next func(r int) []byte) {
	ring := make([][][]byte, 4096)
	fill := func() {
		for i := range ring {
			ring[i] = ring[i][:0]
			for r := range ms {
				ring[i] = append(ring[i], next(r))
			}
		}
	}
	fill()
	var (
		e   Entry
		out []byte
	)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if i == len(ring) {
			b.StopTimer()
			fill()
			i = 0
			b.StartTimer()
		}
		for r, m := range ms {
			if err := DecodeEntryReuse(&e, ring[i][r]); err != nil {
				b.Fatal(err)
			}
			res := m.Apply(&e)
			if res.Vote != VoteOK {
				b.Fatalf("replica %d: %+v", r, res)
			}
			out = AppendResult(out[:0], &res)
		}
		i++
	}
}

// BenchmarkApplyAppend applies a one-phase Exec of one 64-byte append with
// a count and a reloc of its position into its own data (gcs's link of a
// batch into its order log), as decoded from the log.
func BenchmarkApplyAppend(b *testing.B) {
	m, err := New(Config{})
	if err != nil {
		b.Fatal(err)
	}
	e := Entry{Kind: KindExec, Now: 2, Op: Op{
		Appends: []Append{{Tail: 0, Head: 8, Limit: 1 << 16, Ring: 4096, Size: 1 << 16, Count: 16, Add: 1, Data: make([]byte, 64)}},
		Relocs:  []Reloc{{Append: 0, Item: 0, Off: 0}},
	}}
	var head [8]byte
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		if i%512 == 0 { // the reader frees the ring
			m.ReadAt(head[:], 0)
			m.Apply(&Entry{Kind: KindExec, Now: 2, Op: Op{Writes: []Write{{Addr: 8, Data: head[:]}}}})
		}
		if r := m.Apply(&e); r.Vote != VoteOK {
			b.Fatalf("append: %+v", r)
		}
	}
}
