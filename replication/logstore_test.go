package replication

import (
	"errors"
	"math"
	"math/rand"
	"sync/atomic"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/rs/zerolog"
	"go.etcd.io/raft/v3"
	pb "go.etcd.io/raft/v3/raftpb"
)

// TestLogStoreMatchesMemoryStorage drives a logStore (engine + trimmed
// cache) and a MemoryStorage holding the whole log through random appends
// (with overwrites of the uncommitted suffix), applies, cache trims and log
// truncations, and requires raft to see the same log through both.
func TestLogStoreMatchesMemoryStorage(t *testing.T) {
	for seed := int64(1); seed <= 20; seed++ {
		rng := rand.New(rand.NewSource(seed))
		eng, err := openEngine("", vfs.NewMem(), zerolog.Nop())
		if err != nil {
			t.Fatal(err)
		}
		const g = 7
		st := &logStore{MemoryStorage: raft.NewMemoryStorage(), eng: eng, group: g, reads: new(atomic.Uint64)}
		st.syncFirst()
		ref := raft.NewMemoryStorage()
		var applied, lastStored uint64
		term := uint64(1)
		for step := range 400 {
			last, _ := ref.LastIndex()
			switch op := rng.Intn(10); {
			case op < 4: // append, sometimes overwriting the unapplied suffix
				from := last + 1
				if last > applied && rng.Intn(3) == 0 {
					from = applied + 1 + uint64(rng.Intn(int(last-applied)))
					term++
				}
				ents := make([]*pb.Entry, 1+rng.Intn(5))
				for i := range ents {
					data := make([]byte, rng.Intn(300))
					rng.Read(data)
					ents[i] = &pb.Entry{Index: new(from + uint64(i)), Term: new(term), Type: pb.EntryNormal.Enum(), Data: data}
				}
				b := eng.newBatch()
				b.appendEntries(g, ents, lastStored)
				if err := b.commit(false); err != nil {
					t.Fatal(err)
				}
				b.close()
				lastStored = ents[len(ents)-1].GetIndex()
				if err := st.Append(ents); err != nil {
					t.Fatal(err)
				}
				if err := ref.Append(ents); err != nil {
					t.Fatal(err)
				}
			case op < 6: // apply
				if last > applied {
					applied += 1 + uint64(rng.Intn(int(last-applied)))
				}
			case op < 8: // trim the cache up to applied
				if cf, _ := st.MemoryStorage.FirstIndex(); applied >= cf {
					if err := st.MemoryStorage.Compact(cf + uint64(rng.Intn(int(applied-cf+1)))); err != nil {
						t.Fatal(err)
					}
				}
			default: // truncate the log up to applied
				if applied < st.first {
					break
				}
				ci := st.first + uint64(rng.Intn(int(applied-st.first+1)))
				tm, err := st.Term(ci)
				if err != nil {
					t.Fatalf("seed %d step %d: Term(%d): %v", seed, step, ci, err)
				}
				if cf, _ := st.MemoryStorage.FirstIndex(); ci >= cf {
					if err := st.MemoryStorage.Compact(ci); err != nil {
						t.Fatal(err)
					}
				}
				b := eng.newBatch()
				b.truncatePrefix(g, ci)
				if err := b.commit(false); err != nil {
					t.Fatal(err)
				}
				b.close()
				st.resetFirst(ci+1, tm)
				if err := ref.Compact(ci); err != nil {
					t.Fatal(err)
				}
			}
			checkSameLog(t, seed, step, rng, st, ref)
		}
		if st.reads.Load() == 0 {
			t.Fatalf("seed %d: no entry was read from the engine", seed)
		}
		if err := eng.close(); err != nil {
			t.Fatal(err)
		}
	}
}

func checkSameLog(t *testing.T, seed int64, step int, rng *rand.Rand, st *logStore, ref *raft.MemoryStorage) {
	t.Helper()
	first, _ := st.FirstIndex()
	rfirst, _ := ref.FirstIndex()
	last, _ := st.LastIndex()
	rlast, _ := ref.LastIndex()
	if first != rfirst || last != rlast {
		t.Fatalf("seed %d step %d: first/last %d/%d, want %d/%d", seed, step, first, last, rfirst, rlast)
	}
	for i := first - 1; i <= last; i++ {
		got, err := st.Term(i)
		want, rerr := ref.Term(i)
		if got != want || (err == nil) != (rerr == nil) {
			t.Fatalf("seed %d step %d: Term(%d) = %d, %v; want %d, %v", seed, step, i, got, err, want, rerr)
		}
	}
	if first > 1 {
		if _, err := st.Term(first - 2); !errors.Is(err, raft.ErrCompacted) {
			t.Fatalf("seed %d step %d: Term below the log: %v, want ErrCompacted", seed, step, err)
		}
		if _, err := st.Entries(first-1, last+1, math.MaxUint64); !errors.Is(err, raft.ErrCompacted) {
			t.Fatalf("seed %d step %d: Entries below the log: %v, want ErrCompacted", seed, step, err)
		}
	}
	if last < first {
		return
	}
	for range 5 {
		lo := first + uint64(rng.Intn(int(last-first+1)))
		hi := lo + 1 + uint64(rng.Intn(int(last-lo+1)))
		want, err := ref.Entries(lo, hi, math.MaxUint64)
		if err != nil {
			t.Fatal(err)
		}
		got, err := st.Entries(lo, hi, math.MaxUint64)
		if err != nil {
			t.Fatalf("seed %d step %d: Entries(%d, %d): %v", seed, step, lo, hi, err)
		}
		sameEntries(t, seed, step, got, want)
		// With a size limit: a non-empty prefix, within the limit unless
		// it is one entry.
		max := uint64(rng.Intn(1000))
		got, err = st.Entries(lo, hi, max)
		if err != nil {
			t.Fatalf("seed %d step %d: Entries(%d, %d, %d): %v", seed, step, lo, hi, max, err)
		}
		if len(got) == 0 || len(got) > len(want) {
			t.Fatalf("seed %d step %d: Entries(%d, %d, %d) returned %d entries of %d", seed, step, lo, hi, max, len(got), len(want))
		}
		var size uint64
		for _, e := range got {
			size += uint64(len(e.GetData()))
		}
		if len(got) > 1 && size > max {
			t.Fatalf("seed %d step %d: Entries(%d, %d, %d) returned %d bytes in %d entries", seed, step, lo, hi, max, size, len(got))
		}
		sameEntries(t, seed, step, got, want[:len(got)])
	}
}

func sameEntries(t *testing.T, seed int64, step int, got, want []*pb.Entry) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("seed %d step %d: %d entries, want %d", seed, step, len(got), len(want))
	}
	for i := range got {
		g, w := got[i], want[i]
		if g.GetIndex() != w.GetIndex() || g.GetTerm() != w.GetTerm() || string(g.GetData()) != string(w.GetData()) {
			t.Fatalf("seed %d step %d: entry %d = (%d, %d, %d bytes), want (%d, %d, %d bytes)", seed, step, i,
				g.GetIndex(), g.GetTerm(), len(g.GetData()), w.GetIndex(), w.GetTerm(), len(w.GetData()))
		}
	}
}
