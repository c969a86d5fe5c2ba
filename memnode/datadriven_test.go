package memnode

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"

	dd "github.com/cockroachdb/datadriven"
)

// TestDataDriven replays the scripts in testdata/. Commands:
//
//	new [size=N] [max-item=N] [max-items=N] [horizon=N]   fresh Memnode
//	exec|prepare now=N [tid=C.S[@T]] [parts=A,B]          apply; items below
//	commit|abort|auv now=N tid=C.S[@T]                    apply
//	apply kind=K now=N [tid=...]                          apply any kind
//	query [now=N]                                         Query; items below
//	state                                                 dump everything
//	mem addr=A len=N                                      raw bytes
//
// Items, one per line: "cmp ADDR DATA", "read ADDR LEN", "write ADDR DATA",
// where DATA is a Go-quoted string or N*C (N copies of the byte C). A tid
// without @T is dated at now. After every command the harness checks the
// internal invariants, that Restore(Snapshot()) reproduces the state, and
// that invalid entries and queries changed nothing.
func TestDataDriven(t *testing.T) {
	dd.Walk(t, "testdata", func(t *testing.T, path string) {
		m, err := New(Config{})
		if err != nil {
			t.Fatal(err)
		}
		dd.RunTest(t, path, func(t *testing.T, d *dd.TestData) string {
			before := m.Snapshot()
			out, mutates := runCommand(t, &m, d)
			checkInvariants(t, m)
			after := m.Snapshot()
			if !mutates && !bytes.Equal(before, after) {
				t.Fatalf("%s: state changed by a command that must change nothing", d.Pos)
			}
			checkRoundTrip(t, m)
			return out
		})
	})
}

// runCommand runs one command; mutates reports whether it may change state.
func runCommand(t *testing.T, mp **Memnode, d *dd.TestData) (string, bool) {
	m := *mp
	switch d.Cmd {
	case "new":
		cfg := Config{
			Size:         argUint(t, d, "size", 0),
			MaxItemBytes: uint32(argUint(t, d, "max-item", 0)),
			MaxItems:     int(argUint(t, d, "max-items", 0)),
			Horizon:      int64(argUint(t, d, "horizon", 0)),
		}
		n, err := New(cfg)
		if err != nil {
			return "error: " + err.Error(), false
		}
		*mp = n
		c := n.Config()
		return fmt.Sprintf("size=0x%x max-item=%d max-items=%d horizon=%d", c.Size, c.MaxItemBytes, c.MaxItems, c.Horizon), true
	case "exec", "prepare", "commit", "abort", "auv", "apply":
		kinds := map[string]Kind{"exec": KindExec, "prepare": KindPrepare, "commit": KindCommit, "abort": KindAbort, "auv": KindAbortUnlessVoted}
		e := Entry{Kind: kinds[d.Cmd], Now: int64(argUint(t, d, "now", 0)), Op: parseOp(t, d)}
		if d.Cmd == "apply" {
			e.Kind = Kind(argUint(t, d, "kind", 0))
		}
		if d.HasArg("tid") {
			e.TID = parseTID(t, d, e.Now)
		}
		if d.HasArg("parts") {
			for _, p := range strings.Split(argString(t, d, "parts"), ",") {
				e.Participants = append(e.Participants, mustUint(t, p))
			}
		}
		before := m.Snapshot()
		r := m.Apply(&e)
		if r.Err != nil {
			if !errors.Is(r.Err, ErrInvalid) {
				t.Fatalf("%s: error %v does not wrap ErrInvalid", d.Pos, r.Err)
			}
			if !bytes.Equal(before, m.Snapshot()) {
				t.Fatalf("%s: invalid entry changed the state", d.Pos)
			}
		}
		return fmtResult(&r), true
	case "query":
		op := parseOp(t, d)
		r := m.Query(int64(argUint(t, d, "now", 0)), &op)
		return fmtResult(&r), false
	case "state":
		return dumpState(m), false
	case "mem":
		n := argUint(t, d, "len", 0)
		buf := make([]byte, n)
		m.mem.readInto(buf, argUint(t, d, "addr", 0))
		return fmtBytes(buf), false
	}
	t.Fatalf("%s: unknown command %q", d.Pos, d.Cmd)
	return "", false
}

func argString(t *testing.T, d *dd.TestData, key string) string {
	var s string
	d.ScanArgs(t, key, &s)
	return s
}

func argUint(t *testing.T, d *dd.TestData, key string, def uint64) uint64 {
	if !d.HasArg(key) {
		return def
	}
	return mustUint(t, argString(t, d, key))
}

func mustUint(t *testing.T, s string) uint64 {
	v, err := strconv.ParseUint(s, 0, 64)
	if err != nil {
		t.Fatalf("bad number %q: %v", s, err)
	}
	return v
}

// parseTID parses C.S or C.S@T; T defaults to now.
func parseTID(t *testing.T, d *dd.TestData, now int64) TID {
	s := argString(t, d, "tid")
	s, at, hasAt := strings.Cut(s, "@")
	c, sq, ok := strings.Cut(s, ".")
	if !ok {
		t.Fatalf("%s: bad tid %q", d.Pos, s)
	}
	tid := TID{Client: mustUint(t, c), Seq: mustUint(t, sq), Time: now}
	if hasAt {
		v, err := strconv.ParseInt(at, 0, 64)
		if err != nil {
			t.Fatalf("%s: bad tid time %q", d.Pos, at)
		}
		tid.Time = v
	}
	return tid
}

func parseOp(t *testing.T, d *dd.TestData) Op {
	var op Op
	for _, line := range strings.Split(d.Input, "\n") {
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		kind, rest, _ := strings.Cut(line, " ")
		addrS, arg, _ := strings.Cut(strings.TrimSpace(rest), " ")
		addr := mustUint(t, addrS)
		arg = strings.TrimSpace(arg)
		switch kind {
		case "cmp":
			op.Compares = append(op.Compares, Compare{Addr: addr, Data: parseData(t, arg)})
		case "read":
			op.Reads = append(op.Reads, Read{Addr: addr, Len: uint32(mustUint(t, arg))})
		case "write":
			op.Writes = append(op.Writes, Write{Addr: addr, Data: parseData(t, arg)})
		default:
			t.Fatalf("%s: bad item %q", d.Pos, line)
		}
	}
	return op
}

// parseData parses a Go-quoted string or N*C.
func parseData(t *testing.T, s string) []byte {
	if strings.HasPrefix(s, `"`) {
		v, err := strconv.Unquote(s)
		if err != nil {
			t.Fatalf("bad data %s: %v", s, err)
		}
		return []byte(v)
	}
	n, c, ok := strings.Cut(s, "*")
	if !ok || len(c) != 1 {
		t.Fatalf("bad data %q", s)
	}
	return bytes.Repeat([]byte(c), int(mustUint(t, n)))
}

func fmtResult(r *Result) string {
	if r.Err != nil {
		return "error: " + r.Err.Error()
	}
	var b strings.Builder
	if r.Vote != 0 {
		b.WriteString(r.Vote.String())
	}
	if r.FailedCompare != -1 {
		fmt.Fprintf(&b, " failed=%d", r.FailedCompare)
	}
	if r.Outcome != OutcomeUnknown || r.Vote == 0 {
		fmt.Fprintf(&b, " outcome=%v", r.Outcome)
	}
	for i, rd := range r.Reads {
		fmt.Fprintf(&b, "\nread %d: %s", i, fmtBytes(rd))
	}
	return strings.TrimSpace(b.String())
}

// fmtBytes quotes short strings and run-length encodes long ones.
func fmtBytes(b []byte) string {
	if len(b) <= 24 {
		return strconv.Quote(string(b))
	}
	var parts []string
	for len(b) > 0 {
		n := 1
		for n < len(b) && b[n] == b[0] {
			n++
		}
		if n >= 8 {
			parts = append(parts, fmt.Sprintf("%d*%q", n, b[0]))
		} else {
			parts = append(parts, strconv.Quote(string(b[:n])))
		}
		b = b[n:]
	}
	return strings.Join(parts, " ")
}

// dumpState prints the whole state in a stable order.
func dumpState(m *Memnode) string {
	var b strings.Builder
	s := m.Stats()
	fmt.Fprintf(&b, "clock=%d last-sweep=%d pages=%d locks=%d in-doubt=%d forced=%d decided=%d\n",
		s.Now, m.lastSweep, s.Pages, s.Locks, s.InDoubt, s.ForcedAbort, s.Decided)
	var pns []uint64
	m.mem.eachPage(func(pn uint64, _ *page) { pns = append(pns, pn) })
	if len(pns) > 0 {
		fmt.Fprintf(&b, "pages: %v\n", pns)
	}
	for _, tx := range m.InDoubt() {
		t := m.inDoubt.get(tx.TID)
		fmt.Fprintf(&b, "in-doubt %v parts=%v prepared-at=%d", tx.TID, tx.Participants, tx.PreparedAt)
		for _, c := range t.compares {
			fmt.Fprintf(&b, " S[0x%x,0x%x)", c.addr, c.addr+c.n)
		}
		for _, r := range t.reads {
			fmt.Fprintf(&b, " S[0x%x,0x%x)", r.Addr, r.Addr+uint64(r.Len))
		}
		for _, w := range t.writes {
			fmt.Fprintf(&b, " X[0x%x,0x%x)=%s", w.Addr, w.Addr+uint64(len(w.Data)), fmtBytes(w.Data))
		}
		b.WriteString("\n")
	}
	for _, tid := range recordedTIDs(m, recForced) {
		fmt.Fprintf(&b, "forced %v\n", tid)
	}
	for _, tid := range recordedTIDs(m, recCommitted, recAborted) {
		fmt.Fprintf(&b, "decided %v %v\n", tid, Outcome(m.recorded.get(tid)))
	}
	return strings.TrimSpace(b.String())
}

// checkInvariants checks what the fields' comments promise: the lock table
// is exactly the in-doubt transactions' locks, they do not conflict, the
// tid sets are disjoint, and lastSweep <= clock.
func checkInvariants(t testing.TB, m *Memnode) {
	t.Helper()
	if m.lastSweep > m.clock {
		t.Fatalf("lastSweep %d > clock %d", m.lastSweep, m.clock)
	}
	var want lockTable
	for _, tx := range m.InDoubt() {
		tt := m.inDoubt.get(tx.TID)
		if tt.tid != tx.TID {
			t.Fatalf("in-doubt key %v holds tid %v", tx.TID, tt.tid)
		}
		if want.txnConflicts(tt) {
			t.Fatalf("in-doubt %v conflicts with another in-doubt tid", tx.TID)
		}
		want.acquire(tt)
		if v := m.recorded.get(tx.TID); v != 0 {
			t.Fatalf("tid %v both in doubt and recorded (%d)", tx.TID, v)
		}
	}
	checkTIDSet(t, &m.recorded)
	if got, w := lockSig(&m.locks), lockSig(&want); got != w {
		t.Fatalf("lock table differs from in-doubt locks:\n got %s\nwant %s", got, w)
	}
	if m.locks.ranges != want.ranges {
		t.Fatalf("lock count %d, want %d", m.locks.ranges, want.ranges)
	}
}

func lockSig(lt *lockTable) string {
	var rows []string
	fine := map[uint64][]heldLock{}
	lt.fine.each(func(b uint64, h heldLock) { fine[b] = append(fine[b], h) })
	for kind, m := range map[string]map[uint64][]heldLock{"coarse": lt.coarse, "fine": fine} {
		for b, hs := range m {
			if len(hs) == 0 {
				rows = append(rows, fmt.Sprintf("%s%d:empty", kind, b))
			}
			for _, h := range hs {
				rows = append(rows, fmt.Sprintf("%s%d:[%x,%x)%v:%v", kind, b, h.start, h.end, h.excl, h.owner.tid))
			}
		}
	}
	slices.Sort(rows)
	return strings.Join(rows, " ")
}

// checkRoundTrip checks that a fresh Memnode restored from m's snapshot
// snapshots to the same bytes and has the same lock table.
func checkRoundTrip(t testing.TB, m *Memnode) {
	t.Helper()
	s := m.Snapshot()
	n, err := New(m.cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Restore(s); err != nil {
		t.Fatalf("restore own snapshot: %v", err)
	}
	if !bytes.Equal(n.Snapshot(), s) {
		t.Fatal("Restore(Snapshot()) snapshots differently")
	}
	if lockSig(&n.locks) != lockSig(&m.locks) || n.Stats() != m.Stats() {
		t.Fatal("Restore(Snapshot()) has different locks or stats")
	}
}
