package client_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/tutti-gcs/tutti/client"
	"github.com/tutti-gcs/tutti/internal/cluster"
)

// The ring of TestConcurrentAppendsAllCommit, on memnode 1.
const (
	apMemnode          = 1
	apTail, apHead     = 0x1000, 0x1008
	apCount, apSlots   = 0x1010, 0x1100 // slots: one u64 per writer
	apRing, apRingSize = 0x2000, 4096
	apRecord           = 16 // position (relocated), writer, seq
)

func apAppend(writer, seq uint32) client.Append {
	rec := make([]byte, apRecord)
	binary.LittleEndian.PutUint32(rec[8:], writer)
	binary.LittleEndian.PutUint32(rec[12:], seq)
	return client.Append{Tail: apTail, Head: apHead, Limit: apRingSize, Ring: apRing, Size: apRingSize,
		Count: apCount, Add: 1, Data: rec, Relocs: []client.Reloc{{Off: 0, Append: 0}}}
}

// Three writers appending to one ring at once all commit, at distinct,
// contiguous positions (wrapping at the ring's end), each record holding its own position (a reloc) and
// each writer's slot its last position (a write reloc); a watcher with data
// sees every record and the counters without reading.
func TestConcurrentAppendsAllCommit(t *testing.T) {
	c := startCluster(t, cluster.Config{NoSync: true})
	const writers, each = 3, 50
	watcher := newClient(t, c.Seeds()[:1])
	w, err := watcher.WatchWith(ctxT(t), apMemnode, client.WatchOptions{Data: true},
		client.Range{Addr: apTail, Len: 0x100 + 8*writers}, client.Range{Addr: apRing, Len: apRingSize})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Close)
	// The watcher's copy of the watched memory, from a read after the
	// watch started, then the events' data.
	mirror := map[uint64][]byte{}
	reread := func() {
		mirror[apTail] = read(t, watcher, apMemnode, apTail, 0x100+8*writers)
		mirror[apRing] = read(t, watcher, apMemnode, apRing, apRingSize)
	}
	var dataEvents, counterEvents int
	apply := func(ev client.WatchEvent) {
		if ev.Reset || ev.Data == nil {
			reread()
			return
		}
		dataEvents++
		for i, r := range ev.Ranges {
			for base, mem := range mirror {
				if r.Addr >= base && r.Addr+r.Len <= base+uint64(len(mem)) {
					copy(mem[r.Addr-base:], ev.Data[i])
				}
			}
			if r.Addr <= apTail && r.Addr+r.Len >= apTail+8 {
				counterEvents++
			}
		}
	}
	// The ring starts 8 bytes before its end: the first record wraps.
	const start = apRingSize - 8
	mustExec(t, watcher, client.NewTx().Write(apMemnode, apTail, u64(start)).Write(apMemnode, apHead, u64(start)))
	reread()

	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		placed []client.Appended
		last   [writers]uint64
	)
	for i := range writers {
		cl := newClient(t, c.Seeds()[i%len(c.Seeds()):][:1])
		wg.Add(1)
		go func() {
			defer wg.Done()
			for seq := range uint32(each) {
				tx := client.NewTx().Append(apMemnode, apAppend(uint32(i), seq)).
					WriteReloc(apMemnode, apSlots+8*uint64(i), make([]byte, 8), client.Reloc{Append: 0})
				r, err := cl.Exec(ctxT(t), tx)
				if err != nil {
					t.Errorf("writer %d: %v", i, err)
					return
				}
				if !r.Committed || len(r.Appended) != 1 {
					t.Errorf("writer %d: %+v, want committed with one appended (no BAD-CMP)", i, r)
					return
				}
				mu.Lock()
				placed = append(placed, r.Appended[0])
				last[i] = r.Appended[0].Tail
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	slices.SortFunc(placed, func(a, b client.Appended) int { return int(a.Tail) - int(b.Tail) })
	for k, a := range placed {
		if a.Tail != uint64(start+k*apRecord) || a.Count != uint64(k) {
			t.Fatalf("append %d of the sorted positions is %+v, want {%d %d}: positions not contiguous", k, a, start+k*apRecord, k)
		}
	}
	total := uint64(writers * each)
	end := start + total*apRecord
	if got := read(t, watcher, apMemnode, apTail, 8); !bytes.Equal(got, u64(end)) {
		t.Fatalf("tail %x, want %d", got, end)
	}
	for i := range writers {
		if got := read(t, watcher, apMemnode, apSlots+8*uint64(i), 8); !bytes.Equal(got, u64(last[i])) {
			t.Fatalf("writer %d's slot %x, want its last position %d", i, got, last[i])
		}
	}

	// The watcher catches up from events alone.
	deadline := time.Now().Add(20 * time.Second)
	for binary.LittleEndian.Uint64(mirror[apTail]) != end || binary.LittleEndian.Uint64(mirror[apTail][apCount-apTail:]) != total {
		if time.Now().After(deadline) {
			t.Fatalf("watcher's tail %d, want %d", binary.LittleEndian.Uint64(mirror[apTail]), end)
		}
		apply(next(t, w, time.Until(deadline)))
	}
	t.Logf("%d appends; the watcher applied %d events with data, %d with the tail word", total, dataEvents, counterEvents)
	if dataEvents == 0 || counterEvents == 0 {
		t.Fatalf("%d events with data, %d with the tail word: the watcher learnt nothing from appends", dataEvents, counterEvents)
	}
	seen := map[[2]uint32]bool{}
	ring := mirror[apRing]
	for p := uint64(start); p < end; p += apRecord {
		rec := make([]byte, apRecord)
		for j := range rec {
			rec[j] = ring[(p+uint64(j))%apRingSize]
		}
		if pos := binary.LittleEndian.Uint64(rec); pos != p {
			t.Fatalf("record at %d holds position %d", p, pos)
		}
		seen[[2]uint32{binary.LittleEndian.Uint32(rec[8:]), binary.LittleEndian.Uint32(rec[12:])}] = true
	}
	if len(seen) != int(total) {
		t.Fatalf("the watcher saw %d distinct records, want %d", len(seen), total)
	}
}

// An append refused by its Limit is a failed compare numbered after the
// compares and writes nothing; malformed appends are refused before or at
// the memnode, changing nothing.
func TestAppendRefusalsAndInvalid(t *testing.T) {
	c := startCluster(t, cluster.Config{NoSync: true})
	cl := newClient(t, c.Seeds()[:1])
	r := mustExec(t, cl, client.NewTx().Append(apMemnode, apAppend(0, 0)))
	if !r.Committed || r.Appended[0] != (client.Appended{Tail: 0, Count: 0}) {
		t.Fatalf("first append: %+v", r)
	}
	full := apAppend(0, 1)
	full.Limit = apRecord // 16 in use, 16 more exceed 16
	r = mustExec(t, cl, client.NewTx().Compare(apMemnode, apTail, u64(apRecord)).Read(apMemnode, apTail, 8).
		Append(apMemnode, apAppend(0, 1)).Append(apMemnode, full))
	if r.Committed || r.FailedCompare != 2 || r.Appended != nil || !bytes.Equal(r.Reads[0], u64(apRecord)) {
		t.Fatalf("append past its limit: %+v, want failed compare 1+1 with the reads", r)
	}
	if got := read(t, cl, apMemnode, apTail, 8); !bytes.Equal(got, u64(apRecord)) {
		t.Fatalf("a refused append moved the tail to %x", got)
	}
	// An append can fence an earlier attempt (settling a lost answer):
	// the fenced tid, arriving later, would be refused.
	r = mustExec(t, cl, client.NewTx().Append(apMemnode, apAppend(0, 1)).Read(apMemnode, apTail, 8).
		Fence(client.TID{Client: 1, Seq: 1, Time: time.Now().UnixNano()}))
	if !r.Committed || r.Appended[0].Tail != apRecord || !bytes.Equal(r.Reads[0], u64(apRecord)) {
		t.Fatalf("fencing append: %+v", r)
	}
	bad := apAppend(0, 2)
	bad.Size = 1000
	for name, tx := range map[string]*client.Tx{
		"two memnodes":    client.NewTx().Append(apMemnode, apAppend(0, 2)).Write(2, 0, []byte("x")),
		"reloc source":    client.NewTx().Append(apMemnode, apAppend(0, 2)).WriteReloc(apMemnode, 0x3000, make([]byte, 8), client.Reloc{Append: 1}),
		"no append":       client.NewTx().WriteReloc(apMemnode, 0x3000, make([]byte, 8), client.Reloc{}),
		"ring size":       client.NewTx().Append(apMemnode, bad),
		"write over tail": client.NewTx().Append(apMemnode, apAppend(0, 2)).Write(apMemnode, apTail, []byte("x")),
	} {
		if _, err := cl.Exec(ctxT(t), tx); !errors.Is(err, client.ErrInvalid) {
			t.Errorf("%s: error %v, want ErrInvalid", name, err)
		}
	}
	if got := read(t, cl, apMemnode, apTail, 8); !bytes.Equal(got, u64(2*apRecord)) {
		t.Fatalf("an invalid append moved the tail to %x", got)
	}
}
