package client_test

import (
	"errors"
	"reflect"
	"testing"

	"github.com/tutti-gcs/tutti/client"
)

func testDirectory() *client.Directory {
	return &client.Directory{
		Version: 7,
		Config:  client.DirectoryConfig{Size: 1 << 40, MaxItemBytes: 1 << 20, MaxItems: 1024, Replicas: 3},
		Hosts:   []client.DirectoryHost{{ID: 1, Addr: "a:1"}, {ID: 2, Addr: "b:2"}, {ID: 3, Addr: "c:3"}, {ID: 4, Addr: "d:4"}},
		Memnodes: []client.DirectoryMemnode{
			{ID: 0, Replicas: []uint64{1, 2, 3}},
			{ID: 1, Replicas: []uint64{1, 2, 3}},
		},
	}
}

func TestDirectoryEncodingRoundTripAndChecks(t *testing.T) {
	d := testDirectory()
	enc := client.EncodeDirectory(d)
	got, err := client.DecodeDirectory(enc)
	if err != nil || !reflect.DeepEqual(got, d) {
		t.Fatalf("round trip: %+v, %v", got, err)
	}
	// Trailing bytes of the region (zeros) are ignored.
	if _, err := client.DecodeDirectory(append(enc, make([]byte, 100)...)); err != nil {
		t.Fatal(err)
	}
	if _, err := client.DecodeDirectory(make([]byte, 4096)); !errors.Is(err, client.ErrNoDirectory) {
		t.Fatalf("zero region: %v", err)
	}
	for i := range enc {
		bad := append([]byte(nil), enc...)
		bad[i] ^= 0x40
		if _, err := client.DecodeDirectory(bad); !errors.Is(err, client.ErrBadDirectory) {
			t.Fatalf("flipped byte %d decoded: %v", i, err)
		}
	}
	if _, err := client.DecodeDirectory(enc[:len(enc)-1]); !errors.Is(err, client.ErrBadDirectory) {
		t.Fatalf("truncated: %v", err)
	}
	if w := client.DirectoryWrites(enc, 16); len(w) != (len(enc)+15)/16 || w[1].Addr != client.DirectoryAddr+16 {
		t.Fatalf("writes: %+v", w)
	}
}

func TestDirectoryChangesValidate(t *testing.T) {
	d := testDirectory()
	id, err := d.AddMemnode(nil)
	if err != nil || id != 2 || !reflect.DeepEqual(d.Memnode(2).Replicas, []uint64{1, 2, 4}) ||
		!reflect.DeepEqual(d.Memnode(2).Bootstrap, []uint64{1, 2, 4}) {
		t.Fatalf("AddMemnode: %d %v %+v", id, err, d.Memnode(2))
	}
	if err := d.MoveReplica(1, 1, 4); err != nil || !reflect.DeepEqual(d.Memnode(1).Replicas, []uint64{2, 3, 4}) {
		t.Fatalf("MoveReplica: %v %+v", err, d.Memnode(1))
	}
	// The initial voters stay until the group's leader clears them.
	if err := d.AddReplica(2, 3); err != nil || !reflect.DeepEqual(d.Memnode(2).Bootstrap, []uint64{1, 2, 4}) {
		t.Fatalf("AddReplica keeps Bootstrap: %v %+v", err, d.Memnode(2))
	}
	if err := d.Validate(); err != nil {
		t.Fatal(err)
	}
	before := client.EncodeDirectory(d)
	one := &client.Directory{Hosts: d.Hosts, Memnodes: []client.DirectoryMemnode{{ID: 0, Replicas: []uint64{4}}}}
	for name, err := range map[string]error{
		"unknown memnode":     d.AddReplica(9, 1),
		"unknown host":        d.AddReplica(0, 9),
		"duplicate":           d.AddReplica(0, 1),
		"not a replica":       d.RemoveReplica(0, 4),
		"move onto holder":    d.MoveReplica(0, 1, 2),
		"move to itself":      d.MoveReplica(0, 1, 1),
		"memnode, dup hosts":  func() error { _, err := d.AddMemnode([]uint64{1, 1}); return err }(),
		"memnode, bad host":   func() error { _, err := d.AddMemnode([]uint64{5}); return err }(),
		"last replica":        one.RemoveReplica(0, 4),
		"remove unknown host": d.RemoveReplica(0, 9),
	} {
		if !errors.Is(err, client.ErrDirectoryChange) {
			t.Errorf("%s: %v", name, err)
		}
	}
	if string(client.EncodeDirectory(d)) != string(before) {
		t.Fatal("refused changes edited the directory")
	}
}
