package kvstore

import (
	"bytes"
	"errors"
	"slices"
	"testing"
)

func TestCommandEncoding(t *testing.T) {
	cmds := []Command{
		Set("a", []byte("1")),
		Set("bin", []byte{0, 0xff, 0}),
		Set("empty", nil),
		Del("a"),
		Incr("n", -7),
		MSet([]string{"x", "y"}, [][]byte{[]byte("1"), []byte("2")}),
		Clear(),
	}
	for i, c := range cmds {
		b, err := EncodeCommand(c, uint64(i+1))
		if err != nil {
			t.Fatalf("%v: %v", c, err)
		}
		got, id, err := DecodeCommand(b)
		if err != nil || id != uint64(i+1) || got.Op != c.Op || got.Delta != c.Delta || !slices.Equal(got.Keys, c.Keys) ||
			len(got.Values) != len(c.Values) {
			t.Fatalf("round trip of %+v: %+v id %d err %v", c, got, id, err)
		}
		for j := range c.Values {
			if !bytes.Equal(got.Values[j], c.Values[j]) {
				t.Fatalf("value %d of %+v: %q", j, c, got.Values[j])
			}
		}
		for cut := 0; cut < len(b); cut++ {
			if _, _, err := DecodeCommand(b[:cut]); !errors.Is(err, ErrBadCommand) {
				t.Fatalf("truncated %+v at %d: %v", c, cut, err)
			}
		}
	}
	for _, bad := range []Command{{Op: OpSet, Keys: []string{"a"}}, Set("", nil), {Op: 99}, {Op: OpClear, Keys: []string{"a"}}} {
		if _, err := EncodeCommand(bad, 1); !errors.Is(err, ErrBadCommand) {
			t.Errorf("EncodeCommand(%+v) = %v", bad, err)
		}
	}
	if k := Clear().ConflictKeys(); len(k) != 0 {
		t.Errorf("CLEAR conflict keys %v, want none (a barrier)", k)
	}
}

func TestStoreApplySnapshotDigest(t *testing.T) {
	s := NewStore()
	s.Apply(Set("a", []byte("x")))
	if r := s.Apply(Incr("a", 1)); !errors.Is(r.Err, ErrNotInteger) {
		t.Fatalf("INCR of a non-integer: %+v", r)
	}
	if r := s.Apply(Incr("n", 5)); string(r.Value) != "5" {
		t.Fatalf("INCR: %+v", r)
	}
	s.Apply(Set("big", []byte("9223372036854775807")))
	if r := s.Apply(Incr("big", 1)); !errors.Is(r.Err, ErrOverflow) {
		t.Fatalf("INCR overflow: %+v", r)
	}
	s.Apply(MSet([]string{"m1", "m2"}, [][]byte{[]byte("1"), []byte("2")}))
	if r := s.Apply(Del("m1")); !r.Found {
		t.Fatal("DEL of a present key: not found")
	}
	if r := s.Apply(Del("m1")); r.Found {
		t.Fatal("DEL of an absent key: found")
	}

	c := NewStore()
	if err := c.Restore(s.Snapshot()); err != nil {
		t.Fatal(err)
	}
	n1, d1 := s.Digest()
	n2, d2 := c.Digest()
	if n1 != 4 || n1 != n2 || d1 != d2 {
		t.Fatalf("restored copy differs: %d %x vs %d %x", n1, d1, n2, d2)
	}
	if v, ok := c.Get("m2"); !ok || string(v) != "2" {
		t.Fatalf("restored m2 = %q %v", v, ok)
	}
	c.Apply(Set("a", []byte("y")))
	if _, d3 := c.Digest(); d3 == d1 {
		t.Fatal("digest did not change with the state")
	}
	c.Apply(Clear())
	if n, _ := c.Digest(); n != 0 {
		t.Fatalf("%d keys after CLEAR", n)
	}
	if err := c.Restore([]byte{5, 1}); err == nil {
		t.Fatal("Restore accepted a truncated snapshot")
	}
}
