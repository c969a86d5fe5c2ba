package kvstore

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"math"
	"slices"
	"strconv"
	"sync"
)

// Op is a command's operation. Wire values: only append.
type Op uint8

// Operations.
const (
	opNoop Op = 0 // an undecodable message, applied as a barrier that does nothing
	// OpSet sets Keys[0] to Values[0].
	OpSet Op = 1
	// OpDel deletes Keys[0].
	OpDel Op = 2
	// OpIncr adds Delta to the decimal integer at Keys[0] (absent: 0).
	OpIncr Op = 3
	// OpMSet sets every Keys[i] to Values[i] atomically: a multi-key
	// command, serialized with every command that shares one of its keys.
	OpMSet Op = 4
	// OpClear deletes every key: it has no conflict keys, so the parallel
	// scheduler runs it as a barrier.
	OpClear Op = 5
)

func (o Op) String() string {
	switch o {
	case OpSet:
		return "SET"
	case OpDel:
		return "DEL"
	case OpIncr:
		return "INCR"
	case OpMSet:
		return "MSET"
	case OpClear:
		return "CLEAR"
	}
	return fmt.Sprintf("op(%d)", uint8(o))
}

// Errors. A Result's Err is deterministic: every replica reports the same
// one for the same command.
var (
	// ErrNotInteger: INCR of a value that is not a decimal int64.
	ErrNotInteger = errors.New("kv: value is not an integer")
	// ErrOverflow: INCR would overflow int64.
	ErrOverflow = errors.New("kv: increment overflows int64")
	// ErrBadCommand: a command that cannot be encoded (wrong arity, empty
	// key) or a payload that is not a command.
	ErrBadCommand = errors.New("kv: bad command")
)

// Command is one state-machine command, multicast to the group.
type Command struct {
	Op     Op
	Keys   []string
	Values [][]byte // SET and MSET: one per key
	Delta  int64    // INCR
}

// Set sets k to v.
func Set(k string, v []byte) Command {
	return Command{Op: OpSet, Keys: []string{k}, Values: [][]byte{v}}
}

// Del deletes k.
func Del(k string) Command { return Command{Op: OpDel, Keys: []string{k}} }

// Incr adds delta to the integer at k.
func Incr(k string, delta int64) Command { return Command{Op: OpIncr, Keys: []string{k}, Delta: delta} }

// MSet sets ks[i] to vs[i] for every i, atomically.
func MSet(ks []string, vs [][]byte) Command { return Command{Op: OpMSet, Keys: ks, Values: vs} }

// Clear deletes every key.
func Clear() Command { return Command{Op: OpClear} }

// ConflictKeys is the command's conflict key set for gcs.Parallel: its
// keys, or none (a barrier) for CLEAR. It depends on the command only.
func (c Command) ConflictKeys() []string {
	if c.Op == OpClear || c.Op == opNoop {
		return nil
	}
	return c.Keys
}

func (c Command) validate() error {
	switch c.Op {
	case OpSet:
		if len(c.Keys) != 1 || len(c.Values) != 1 {
			return fmt.Errorf("%w: SET takes one key and one value", ErrBadCommand)
		}
	case OpDel, OpIncr:
		if len(c.Keys) != 1 || len(c.Values) != 0 {
			return fmt.Errorf("%w: %s takes one key", ErrBadCommand, c.Op)
		}
	case OpMSet:
		if len(c.Keys) == 0 || len(c.Keys) != len(c.Values) {
			return fmt.Errorf("%w: MSET takes pairs of keys and values", ErrBadCommand)
		}
	case OpClear:
		if len(c.Keys) != 0 || len(c.Values) != 0 {
			return fmt.Errorf("%w: CLEAR takes no keys", ErrBadCommand)
		}
	default:
		return fmt.Errorf("%w: unknown op %d", ErrBadCommand, c.Op)
	}
	for _, k := range c.Keys {
		if k == "" {
			return fmt.Errorf("%w: empty key", ErrBadCommand)
		}
	}
	return nil
}

// Encoding of a command (the multicast payload), little-endian varints:
//
//	version u8 (1) | op u8 | id uvarint | delta varint | n uvarint |
//	n × (key len uvarint, key, has-value u8, [value len uvarint, value])
//
// id is the sending replica's request number, used to hand the result back
// to the waiting caller; it does not affect the state.
const cmdVersion = 1

// EncodeCommand encodes c with request number id.
func EncodeCommand(c Command, id uint64) ([]byte, error) {
	if err := c.validate(); err != nil {
		return nil, err
	}
	b := []byte{cmdVersion, byte(c.Op)}
	b = binary.AppendUvarint(b, id)
	b = binary.AppendVarint(b, c.Delta)
	b = binary.AppendUvarint(b, uint64(len(c.Keys)))
	for i, k := range c.Keys {
		b = appendBytes(b, []byte(k))
		if i < len(c.Values) {
			b = append(b, 1)
			b = appendBytes(b, c.Values[i])
		} else {
			b = append(b, 0)
		}
	}
	return b, nil
}

// DecodeCommand decodes a payload made by EncodeCommand.
func DecodeCommand(b []byte) (Command, uint64, error) {
	d := decoder{b: b}
	if v := d.byte(); v != cmdVersion {
		return Command{}, 0, fmt.Errorf("%w: version %d", ErrBadCommand, v)
	}
	c := Command{Op: Op(d.byte())}
	id := d.uvarint()
	c.Delta = d.varint()
	n := d.uvarint()
	if n > uint64(len(b)) {
		return Command{}, 0, fmt.Errorf("%w: %d keys in %d bytes", ErrBadCommand, n, len(b))
	}
	for i := uint64(0); i < n && d.err == nil; i++ {
		c.Keys = append(c.Keys, string(d.bytes()))
		if d.byte() == 1 {
			c.Values = append(c.Values, d.bytes())
		}
	}
	if d.err == nil && len(d.b) != 0 {
		d.err = fmt.Errorf("%w: %d trailing bytes", ErrBadCommand, len(d.b))
	}
	if d.err != nil {
		return Command{}, 0, d.err
	}
	if err := c.validate(); err != nil {
		return Command{}, 0, err
	}
	return c, id, nil
}

func appendBytes(b, v []byte) []byte {
	b = binary.AppendUvarint(b, uint64(len(v)))
	return append(b, v...)
}

// decoder reads varint-framed fields; the first error sticks.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) fail() {
	if d.err == nil {
		d.err = fmt.Errorf("%w: truncated", ErrBadCommand)
	}
	d.b = nil
}

func (d *decoder) byte() byte {
	if len(d.b) < 1 {
		d.fail()
		return 0
	}
	v := d.b[0]
	d.b = d.b[1:]
	return v
}

func (d *decoder) uvarint() uint64 {
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail()
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) varint() int64 {
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.fail()
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) bytes() []byte {
	l := d.uvarint()
	if d.err != nil || l > uint64(len(d.b)) {
		d.fail()
		return nil
	}
	v := d.b[:l:l]
	d.b = d.b[l:]
	return v
}

// Result is what applying a command returned.
type Result struct {
	// Value: INCR's new value.
	Value []byte
	// Found: DEL found the key.
	Found bool
	// Err: a deterministic failure (ErrNotInteger, ErrOverflow); the state
	// is unchanged.
	Err error
	// Pos is the command's position in the group's total order.
	Pos uint64
}

// shards is the number of independently locked parts of a Store.
const shards = 16

// Store is the replicated state: a map from keys to values, in shards
// that are locked independently so that commands on disjoint keys apply in
// parallel. It is safe for concurrent use; Apply of two commands that
// share a key must not run concurrently (gcs.Parallel guarantees it), and
// barriers (CLEAR, Snapshot) must run alone.
type Store struct {
	shard [shards]struct {
		sync.Mutex
		m map[string][]byte
	}
}

// NewStore returns an empty Store.
func NewStore() *Store {
	s := &Store{}
	for i := range s.shard {
		s.shard[i].m = map[string][]byte{}
	}
	return s
}

func shardOf(k string) int {
	h := fnv.New32a()
	h.Write([]byte(k))
	return int(h.Sum32() % shards)
}

func (s *Store) get(k string) ([]byte, bool) {
	sh := &s.shard[shardOf(k)]
	sh.Lock()
	defer sh.Unlock()
	v, ok := sh.m[k]
	return v, ok
}

func (s *Store) put(k string, v []byte) {
	sh := &s.shard[shardOf(k)]
	sh.Lock()
	defer sh.Unlock()
	sh.m[k] = v
}

func (s *Store) del(k string) bool {
	sh := &s.shard[shardOf(k)]
	sh.Lock()
	defer sh.Unlock()
	_, ok := sh.m[k]
	delete(sh.m, k)
	return ok
}

// Get returns the value of k.
func (s *Store) Get(k string) ([]byte, bool) { return s.get(k) }

// Apply applies c. It is a deterministic function of the state of c's keys
// (all keys for CLEAR) and c.
func (s *Store) Apply(c Command) Result {
	switch c.Op {
	case OpSet:
		s.put(c.Keys[0], c.Values[0])
	case OpMSet:
		for i, k := range c.Keys {
			s.put(k, c.Values[i])
		}
	case OpDel:
		return Result{Found: s.del(c.Keys[0])}
	case OpIncr:
		var n int64
		if v, ok := s.get(c.Keys[0]); ok {
			var err error
			if n, err = strconv.ParseInt(string(v), 10, 64); err != nil {
				return Result{Err: ErrNotInteger}
			}
		}
		if (c.Delta > 0 && n > math.MaxInt64-c.Delta) || (c.Delta < 0 && n < math.MinInt64-c.Delta) {
			return Result{Err: ErrOverflow}
		}
		v := []byte(strconv.FormatInt(n+c.Delta, 10))
		s.put(c.Keys[0], v)
		return Result{Value: v}
	case OpClear:
		for i := range s.shard {
			sh := &s.shard[i]
			sh.Lock()
			clear(sh.m)
			sh.Unlock()
		}
	}
	return Result{}
}

// Snapshot encodes the whole map, keys sorted, so that equal states encode
// to equal bytes:
//
//	n uvarint | n × (key len uvarint, key, value len uvarint, value)
func (s *Store) Snapshot() []byte {
	type kv struct {
		k string
		v []byte
	}
	var all []kv
	for i := range s.shard {
		sh := &s.shard[i]
		sh.Lock()
		for k, v := range sh.m {
			all = append(all, kv{k, v})
		}
		sh.Unlock()
	}
	slices.SortFunc(all, func(a, b kv) int {
		switch {
		case a.k < b.k:
			return -1
		case a.k > b.k:
			return 1
		}
		return 0
	})
	b := binary.AppendUvarint(nil, uint64(len(all)))
	for _, e := range all {
		b = appendBytes(b, []byte(e.k))
		b = appendBytes(b, e.v)
	}
	return b
}

// Restore replaces the state with a Snapshot's.
func (s *Store) Restore(b []byte) error {
	d := decoder{b: b}
	n := d.uvarint()
	if n > uint64(len(b)) {
		return fmt.Errorf("%w: snapshot of %d keys in %d bytes", ErrBadCommand, n, len(b))
	}
	m := make(map[string][]byte, n)
	for i := uint64(0); i < n && d.err == nil; i++ {
		k := string(d.bytes())
		m[k] = d.bytes()
	}
	if d.err == nil && len(d.b) != 0 {
		d.err = fmt.Errorf("%w: %d trailing bytes in snapshot", ErrBadCommand, len(d.b))
	}
	if d.err != nil {
		return d.err
	}
	for i := range s.shard {
		sh := &s.shard[i]
		sh.Lock()
		clear(sh.m)
		sh.Unlock()
	}
	for k, v := range m {
		s.put(k, v)
	}
	return nil
}

// Digest returns the number of keys and the SHA-256 of Snapshot: two
// replicas agree exactly when their digests are equal.
func (s *Store) Digest() (int, [32]byte) {
	b := s.Snapshot()
	n, _ := binary.Uvarint(b)
	return int(n), sha256.Sum256(b)
}
