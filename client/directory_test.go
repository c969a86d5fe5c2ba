package client_test

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"hash/crc32"
	"reflect"
	"strings"
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

// oldFormatDirectory is a directory as the build before host flags wrote it
// (format 1): hosts 1-3 at a:1, b:2, c:3; memnode 0 on 1,2,3; memnode 1 on
// 2,3 with bootstrap voters 1,2,3; version 7.
const oldFormatDirectory = "545554440100000007000000000000002b000000ebd6aa87dceefedf00000000808080808020808040800803030103613a310203623a320303633a33020003010203000102020303010203"

// A host's drained flag survives encoding (format 2); a directory without
// drained hosts is still written in format 1, byte for byte what older
// builds write (so they read it during a rolling upgrade); directories
// older builds wrote still decode; unknown host flags and formats are
// refused.
func TestDirectoryDrainedFlagEncoding(t *testing.T) {
	old, err := hex.DecodeString(oldFormatDirectory)
	if err != nil {
		t.Fatal(err)
	}
	want := &client.Directory{
		Version: 7,
		Config:  client.DirectoryConfig{Size: 1 << 40, MaxItemBytes: 1 << 20, MaxItems: 1024, Replicas: 3},
		Hosts:   []client.DirectoryHost{{ID: 1, Addr: "a:1"}, {ID: 2, Addr: "b:2"}, {ID: 3, Addr: "c:3"}},
		Memnodes: []client.DirectoryMemnode{
			{ID: 0, Replicas: []uint64{1, 2, 3}},
			{ID: 1, Replicas: []uint64{2, 3}, Bootstrap: []uint64{1, 2, 3}},
		},
	}
	got, err := client.DecodeDirectory(old)
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("old-format directory: %+v, %v", got, err)
	}
	if enc := client.EncodeDirectory(want); !bytes.Equal(enc, old) {
		t.Fatalf("without drained hosts the encoding changed:\n got %x\nwant %x", enc, old)
	}

	d := testDirectory()
	d.Hosts[2].Drained = true
	enc := client.EncodeDirectory(d)
	if f := binary.LittleEndian.Uint16(enc[4:]); f != 2 {
		t.Fatalf("format %d with a drained host, want 2", f)
	}
	got, err = client.DecodeDirectory(enc)
	if err != nil || !reflect.DeepEqual(got, d) || !got.Host(3).Drained || got.Host(2).Drained {
		t.Fatalf("round trip with a drained host: %+v, %v", got, err)
	}
	for i := range enc {
		bad := append([]byte(nil), enc...)
		bad[i] ^= 0x40
		if _, err := client.DecodeDirectory(bad); !errors.Is(err, client.ErrBadDirectory) {
			t.Fatalf("flipped byte %d decoded: %v", i, err)
		}
	}
	// reseal fixes the checksums of a hand-edited encoding.
	reseal := func(b []byte) []byte {
		b = append([]byte(nil), b...)
		binary.LittleEndian.PutUint32(b[16:], uint32(len(b)-client.DirectoryHeaderLen))
		binary.LittleEndian.PutUint32(b[20:], crc32.Checksum(b[client.DirectoryHeaderLen:], crc32.MakeTable(crc32.Castagnoli)))
		binary.LittleEndian.PutUint32(b[24:], crc32.Checksum(b[:24], crc32.MakeTable(crc32.Castagnoli)))
		return b
	}
	if _, err := client.DecodeDirectory(reseal(enc)); err != nil {
		t.Fatalf("reseal broke a valid encoding: %v", err)
	}
	// Host 3's flags are the byte after "c:3": an unknown bit is refused.
	i := bytes.Index(enc, []byte("c:3")) + 3
	if enc[i] != 1 {
		t.Fatalf("host 3's flags byte is %d, want 1", enc[i])
	}
	bad := append([]byte(nil), enc...)
	bad[i] = 3
	if _, err := client.DecodeDirectory(reseal(bad)); !errors.Is(err, client.ErrBadDirectory) || !strings.Contains(err.Error(), "unknown flags") {
		t.Fatalf("unknown host flag: %v", err)
	}
	bad = append([]byte(nil), enc...)
	binary.LittleEndian.PutUint16(bad[4:], 3)
	if _, err := client.DecodeDirectory(reseal(bad)); !errors.Is(err, client.ErrBadDirectory) || !strings.Contains(err.Error(), "unknown format 3") {
		t.Fatalf("format 3: %v", err)
	}
	// A format-1 body read as format 2 (or the reverse) does not decode.
	bad = append([]byte(nil), old...)
	binary.LittleEndian.PutUint16(bad[4:], 2)
	if _, err := client.DecodeDirectory(reseal(bad)); !errors.Is(err, client.ErrBadDirectory) {
		t.Fatalf("format-1 body under a format-2 header: %v", err)
	}
}

// Drained hosts get no new replica (default placement skips them, naming
// them is refused); a host goes only once drained and empty; refused
// changes edit nothing.
func TestDirectoryDrainedHosts(t *testing.T) {
	d := testDirectory() // memnodes 0 and 1 on hosts 1-3; host 4 empty
	if err := d.DrainHost(4); err != nil || !d.Host(4).Drained {
		t.Fatalf("DrainHost: %v %+v", err, d.Host(4))
	}
	if err := d.DrainHost(4); err != nil {
		t.Fatalf("draining a drained host: %v", err)
	}
	// Host 4, the least loaded, used to be picked.
	if got, err := d.PlaceMemnode(nil); err != nil || !reflect.DeepEqual(got, []uint64{1, 2, 3}) {
		t.Fatalf("PlaceMemnode with host 4 drained: %v %v", got, err)
	}
	_, err := d.PlaceMemnode(map[uint64]bool{1: true, 2: true, 4: true})
	if !errors.Is(err, client.ErrTooFewHosts) || !strings.Contains(err.Error(), "drained: [4]") {
		t.Fatalf("PlaceMemnode, 2 answering hosts in service: %v", err)
	}
	before := client.EncodeDirectory(d)
	for name, err := range map[string]error{
		"add replica to drained":  d.AddReplica(0, 4),
		"move replica to drained": d.MoveReplica(1, 1, 4),
		"memnode on drained":      func() error { _, err := d.AddMemnode([]uint64{1, 2, 4}); return err }(),
		"drain unknown host":      d.DrainHost(9),
		"undrain unknown host":    d.UndrainHost(9),
		"remove unknown host":     d.RemoveHost(9),
		"remove, not drained":     d.RemoveHost(1),
	} {
		if !errors.Is(err, client.ErrDirectoryChange) {
			t.Errorf("%s: %v", name, err)
		}
		if name == "add replica to drained" && !strings.Contains(err.Error(), "host 4 is drained") {
			t.Errorf("%s: %v does not say why", name, err)
		}
	}
	if !bytes.Equal(client.EncodeDirectory(d), before) {
		t.Fatal("refused changes edited the directory")
	}

	// Draining host 3, which holds both memnodes: host 4 is drained too,
	// so nowhere to go; undrained, host 4 is where both go.
	if err := d.DrainHost(3); err != nil {
		t.Fatal(err)
	}
	if _, err := d.MoveTarget(0, 3, nil); !errors.Is(err, client.ErrTooFewHosts) {
		t.Fatalf("MoveTarget with every other host holding or drained: %v", err)
	}
	err = d.RemoveHost(3)
	if !errors.Is(err, client.ErrDirectoryChange) || !strings.Contains(err.Error(), "memnodes [0 1]") {
		t.Fatalf("RemoveHost of a host with replicas: %v", err)
	}
	if err := d.UndrainHost(4); err != nil || d.Host(4).Drained {
		t.Fatalf("UndrainHost: %v", err)
	}
	if _, err := d.MoveTarget(0, 3, map[uint64]bool{1: true, 2: true}); !errors.Is(err, client.ErrTooFewHosts) {
		t.Fatalf("MoveTarget, host 4 not answering: %v", err)
	}
	if _, err := d.MoveTarget(0, 4, nil); !errors.Is(err, client.ErrDirectoryChange) {
		t.Fatalf("MoveTarget from a host without the replica: %v", err)
	}
	for _, mn := range []uint64{0, 1} {
		to, err := d.MoveTarget(mn, 3, nil)
		if err != nil || to != 4 {
			t.Fatalf("MoveTarget(%d): %d %v", mn, to, err)
		}
		if err := d.MoveReplica(mn, 3, to); err != nil {
			t.Fatal(err)
		}
	}
	// Least loaded wins: host 4 now holds two, host 5 (new) none.
	d.Hosts = append(d.Hosts, client.DirectoryHost{ID: 5, Addr: "e:5"})
	if to, err := d.MoveTarget(0, 1, nil); err != nil || to != 5 {
		t.Fatalf("MoveTarget to the least-loaded host: %d %v", to, err)
	}
	d.Memnodes[1].Bootstrap = []uint64{3, 4, 5}
	if err := d.RemoveHost(3); !errors.Is(err, client.ErrDirectoryChange) || !strings.Contains(err.Error(), "initial voter of memnode 1") {
		t.Fatalf("RemoveHost of a bootstrap voter: %v", err)
	}
	d.Memnodes[1].Bootstrap = nil
	if err := d.RemoveHost(3); err != nil || d.Host(3) != nil || len(d.Hosts) != 4 {
		t.Fatalf("RemoveHost of a drained, empty host: %v %+v", err, d.Hosts)
	}
	if err := d.Validate(); err != nil {
		t.Fatal(err)
	}
	// Validate still rejects nonsense, now also a bootstrap voter that is
	// not a host.
	d.Memnodes[1].Bootstrap = []uint64{3}
	if err := d.Validate(); err == nil || !strings.Contains(err.Error(), "bootstrap host 3") {
		t.Fatalf("Validate with a removed bootstrap host: %v", err)
	}
}
