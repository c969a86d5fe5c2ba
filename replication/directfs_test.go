package replication

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/rs/zerolog"
	pb "go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// requireDirectIO fails the test unless dir's file system takes O_DIRECT:
// the tests below would otherwise pass on the fallback without testing
// direct writes.
func requireDirectIO(t *testing.T, dir string) {
	t.Helper()
	f, err := os.OpenFile(filepath.Join(dir, "probe"), os.O_RDWR|os.O_CREATE|syscall.O_DIRECT, 0o666)
	if errors.Is(err, syscall.EINVAL) {
		t.Fatalf("%s refuses O_DIRECT: run the tests with TMPDIR on a disk file system", dir)
	}
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	os.Remove(f.Name())
}

// A table file written past the page cache holds exactly the bytes written,
// whatever their sizes (partial blocks, writes across the buffer's end, a
// Sync in the middle followed by more writes), and is as long as they are.
func TestDirectFileHoldsExactlyWhatWasWritten(t *testing.T) {
	dir := t.TempDir()
	requireDirectIO(t, dir)
	d := newDirectFS(vfs.Default)
	rng := rand.New(rand.NewPCG(1, 2))
	for _, sizes := range [][]int{
		{0},
		{1},
		{4095, 1, 4097},
		{directBufSize - 3, 7, 100},
		{3 * directBufSize, 12345},
		{5000, -1, 3000, -1, 70000}, // -1: Sync there
	} {
		name := filepath.Join(dir, fmt.Sprintf("%d.sst", len(sizes)*1000+sizes[0]))
		f, err := d.Create(name, vfs.WriteCategoryUnspecified)
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := f.(*directFile); !ok {
			t.Fatalf("Create gave %T, want a file written with O_DIRECT", f)
		}
		var want []byte
		for _, n := range sizes {
			if n < 0 {
				if err := f.Sync(); err != nil {
					t.Fatal(err)
				}
				continue
			}
			p := make([]byte, n)
			for i := range p {
				p[i] = byte(rng.Uint32())
			}
			want = append(want, p...)
			if w, err := f.Write(p); err != nil || w != n {
				t.Fatalf("Write(%d) = %d, %v", n, w, err)
			}
		}
		if err := f.Sync(); err != nil {
			t.Fatal(err)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("sizes %v: file holds %d bytes, wrote %d (equal prefix: %v)", sizes, len(got), len(want),
				len(got) <= len(want) && bytes.Equal(got, want[:len(got)]))
		}
	}
	// Other files go through the wrapped file system.
	f, err := d.Create(filepath.Join(dir, "000001.log"), vfs.WriteCategoryUnspecified)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := f.(*directFile); ok {
		t.Fatal("a WAL file was opened with O_DIRECT")
	}
	f.Close()
}

// The engine with its tables written past the page cache reads back every
// value, across flushes, deletions, compactions and a reopen.
func TestEngineTablesWrittenDirect(t *testing.T) {
	dir := t.TempDir()
	requireDirectIO(t, dir)
	d := newDirectFS(vfs.Default)
	open := func() *pebble.DB {
		t.Helper()
		db, err := pebble.Open(dir, &pebble.Options{FS: d, Logger: pebbleLogger{}})
		if err != nil {
			t.Fatal(err)
		}
		return db
	}
	db := open()
	key := func(round, i int) []byte { return []byte(fmt.Sprintf("r%02d-k%06d", round, i)) }
	val := func(round, i int) []byte {
		return bytes.Repeat([]byte(fmt.Sprintf("%d.%d;", round, i)), 1+(i*7+round)%300)
	}
	const rounds, keys = 6, 500
	for round := 0; round < rounds; round++ {
		for i := 0; i < keys; i++ {
			if err := db.Set(key(round, i), val(round, i), pebble.NoSync); err != nil {
				t.Fatal(err)
			}
		}
		if err := db.Flush(); err != nil {
			t.Fatal(err)
		}
		if round%2 == 1 { // drop the round before, as log truncation does
			if err := db.DeleteRange(key(round-1, 0), key(round-1, keys), pebble.Sync); err != nil {
				t.Fatal(err)
			}
			if err := db.Compact(t.Context(), key(0, 0), key(rounds, 0), true); err != nil {
				t.Fatal(err)
			}
		}
		if round == 3 {
			if err := db.Close(); err != nil {
				t.Fatal(err)
			}
			db = open()
		}
	}
	defer db.Close()
	if err := db.CheckLevels(nil); err != nil {
		t.Fatal(err)
	}
	for round := 0; round < rounds; round++ {
		for i := 0; i < keys; i++ {
			got, closer, err := db.Get(key(round, i))
			if round%2 == 0 && round+1 < rounds {
				if err != pebble.ErrNotFound {
					t.Fatalf("round %d key %d: deleted, Get gave %v", round, i, err)
				}
				continue
			}
			if err != nil {
				t.Fatalf("round %d key %d: %v", round, i, err)
			}
			if !bytes.Equal(got, val(round, i)) {
				t.Fatalf("round %d key %d: read %d bytes, wrote %d", round, i, len(got), len(val(round, i)))
			}
			closer.Close()
		}
	}
	if d.written.Load() < rounds {
		t.Fatalf("%d tables written with O_DIRECT, want at least %d", d.written.Load(), rounds)
	}
}

// Snapshot files are written past the page cache on the OS's file system,
// and read back exactly, whatever their size (within a block, a block and
// some, more than the writer's buffer).
func TestSnapshotFilesWrittenDirect(t *testing.T) {
	dir := t.TempDir()
	requireDirectIO(t, dir)
	e, err := openEngine(dir, nil, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer e.close()
	d, ok := e.fs.(*directFS)
	if !ok {
		t.Fatalf("engine's file system is %T, want *directFS", e.fs)
	}
	rng := rand.New(rand.NewPCG(3, 4))
	for i, n := range []int{100, directBlock + 7, directBufSize + directBlock + 1, 3 * directBufSize} {
		before := d.written.Load()
		data := make([]byte, n)
		for j := range data {
			data[j] = byte(rng.Uint32())
		}
		snap := &pb.Snapshot{Data: data, Metadata: &pb.SnapshotMetadata{Index: proto.Uint64(uint64(10 + i)), Term: proto.Uint64(2)}}
		name, err := e.writeSnapFile(7, snap, true)
		if err != nil {
			t.Fatal(err)
		}
		if d.written.Load() != before+1 {
			t.Fatalf("%d bytes: snapshot file not written with O_DIRECT", n)
		}
		st, err := os.Stat(filepath.Join(dir, snapDirName, name))
		if err != nil {
			t.Fatal(err)
		}
		if st.Size() != int64(n) {
			t.Fatalf("%d bytes: file of %d bytes", n, st.Size())
		}
		got, err := e.readSnapFile(name)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, data) {
			t.Fatalf("%d bytes: read back different bytes", n)
		}
	}
}
