package membership

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

var (
	t0     = time.Unix(1_700_000_000, 0)
	timing = Timing{TakeoverTimeout: time.Second, AbsentTimeout: 5 * time.Second, IsolationDelay: 10 * time.Second}
	small  = TableConfig{Memnode: 0, Base: 0x1000, MaxRows: 4, LogSize: 8}
)

func alive(slot int, id string, inc uint64) Row {
	return Row{Slot: slot, ID: id, Incarnation: inc, State: StateAlive, Since: t0, By: inc, GossipAddr: id + ":7946"}
}

func table(version uint64, rows ...Row) Table {
	t := Table{Version: version, format: tableFormat, cfg: small}
	for _, r := range rows {
		t.set(r)
		t.MaxIncarnation = max(t.MaxIncarnation, r.Incarnation)
	}
	return t
}

// three live processes a (rank 0), b (rank 1), c (rank 2).
func abc() Table { return table(3, alive(0, "a", 1), alive(1, "b", 2), alive(2, "c", 3)) }

func in(self string, inc uint64, t Table, now time.Time, view map[string]Observation) Input {
	return Input{Self: Row{ID: self, Incarnation: inc, GossipAddr: self + ":7946"}, Table: t, View: view, Epoch: t0, Now: now, Timing: timing}
}

func seen(s Seen, inc uint64, since time.Time) Observation {
	return Observation{Seen: s, Incarnation: inc, Since: since}
}

func TestDecideRegister(t *testing.T) {
	// Fresh table: first slot, incarnation 1.
	d := Decide(in("a", 0, table(0), t0, nil))
	if d.Action != ActRegister || d.Plan.New.Slot != 0 || d.Plan.New.Incarnation != 1 || d.Plan.Version() != 1 {
		t.Fatalf("fresh: %+v", d)
	}
	// An id with an old row reuses it, with max+1.
	tb := table(9, Row{Slot: 0, ID: "a", Incarnation: 4, State: StateDead, Since: t0}, alive(1, "b", 7))
	d = Decide(in("a", 0, tb, t0, nil))
	if d.Action != ActRegister || d.Plan.New.Slot != 0 || d.Plan.New.Incarnation != 8 || d.Plan.Old.Incarnation != 4 {
		t.Fatalf("reuse own row: %+v", d)
	}
	// A full table reuses the longest-dead row of another id.
	full := table(9, alive(0, "a", 1), Row{Slot: 1, ID: "x", Incarnation: 2, State: StateDead, Since: t0.Add(time.Second)},
		Row{Slot: 2, ID: "y", Incarnation: 3, State: StateLeft, Since: t0}, alive(3, "b", 4))
	d = Decide(in("z", 0, full, t0, nil))
	if d.Action != ActRegister || d.Plan.New.Slot != 2 || d.Plan.New.Incarnation != 5 {
		t.Fatalf("full, reuse: %+v", d)
	}
	// Full of live processes: no plan, retry later.
	full = table(9, alive(0, "a", 1), alive(1, "b", 2), alive(2, "c", 3), alive(3, "d", 4))
	d = Decide(in("z", 0, full, t0, nil))
	if d.Action != ActRegister || d.Plan.Base.cfg.MaxRows != 0 || d.Next.IsZero() {
		t.Fatalf("full of live: %+v", d)
	}
}

func TestDecideSelfRepair(t *testing.T) {
	tb := abc()
	c := tb.Rows[2]
	c.State = StateDead
	tb.set(c)
	// c was declared dead while alive: rejoin with max+1 in its own slot.
	d := Decide(in("c", 3, tb, t0, nil))
	if d.Action != ActRejoin || d.Plan.New.Slot != 2 || d.Plan.New.Incarnation != 4 || d.Plan.Old.State != StateDead {
		t.Fatalf("rejoin: %+v", d)
	}
	// While leaving, no repair.
	i := in("c", 3, tb, t0, nil)
	i.Leaving = true
	if d := Decide(i); d.Action != ActNone {
		t.Fatalf("leaving: %+v", d)
	}
	// A newer incarnation of c exists: c is a zombie and stops.
	tb.set(alive(2, "c", 5))
	if d := Decide(in("c", 3, tb, t0, nil)); d.Action != ActSuperseded {
		t.Fatalf("superseded: %+v", d)
	}
}

func TestDecideRankAndTakeover(t *testing.T) {
	tb := abc()
	dead := map[string]Observation{"a": seen(SeenAlive, 1, t0), "b": seen(SeenAlive, 2, t0), "c": seen(SeenDead, 3, t0.Add(time.Second))}
	at := t0.Add(time.Second)
	// a is the lowest-ranked live process: it acts at once.
	d := Decide(in("a", 1, tb, at, dead))
	if d.Action != ActMarkDead || d.Plan.New.ID != "c" || d.Plan.New.State != StateDead || d.Plan.New.By != 1 || d.Plan.New.Incarnation != 3 {
		t.Fatalf("rank 0: %+v", d)
	}
	// b waits one takeover timeout, then acts if the table still shows c.
	d = Decide(in("b", 2, tb, at, dead))
	if d.Action != ActNone || !d.Next.Equal(at.Add(time.Second)) {
		t.Fatalf("rank 1 early: %+v", d)
	}
	if d := Decide(in("b", 2, tb, d.Next, dead)); d.Action != ActMarkDead || d.Plan.New.ID != "c" {
		t.Fatalf("rank 1 takeover: %+v", d)
	}
	// If a is gone too, b is the lowest of the rest; but two of two others
	// gone means b may be the one cut off: it waits IsolationDelay.
	both := map[string]Observation{"a": seen(SeenDead, 1, at), "c": seen(SeenDead, 3, at)}
	d = Decide(in("b", 2, tb, at, both))
	if d.Action != ActNone || !d.Next.Equal(at.Add(timing.IsolationDelay)) {
		t.Fatalf("isolated: %+v", d)
	}
	if d := Decide(in("b", 2, tb, d.Next, both)); d.Action != ActMarkDead || d.Plan.New.ID != "a" {
		t.Fatalf("isolated after delay: %+v (slot order breaks ties)", d)
	}
	// Graceful leave seen in gossip but not yet in the table.
	left := map[string]Observation{"b": seen(SeenAlive, 2, t0), "c": seen(SeenLeft, 3, at)}
	if d := Decide(in("a", 1, tb, at, left)); d.Action != ActMarkLeft || d.Plan.New.State != StateLeft {
		t.Fatalf("left: %+v", d)
	}
}

func TestDecideStaleEvidenceAndAbsence(t *testing.T) {
	tb := abc()
	// memberlist saw an older incarnation of c die: that says nothing about
	// c's current incarnation, which is treated as absent.
	stale := map[string]Observation{"b": seen(SeenAlive, 2, t0), "c": seen(SeenDead, 2, t0)}
	d := Decide(in("a", 1, tb, t0, stale))
	if d.Action != ActNone || !d.Next.Equal(t0.Add(timing.AbsentTimeout)) {
		t.Fatalf("stale dead: %+v", d)
	}
	// Absence counts from when the observer first saw the row.
	i := in("a", 1, tb, t0.Add(6*time.Second), stale)
	i.RowSeen = map[string]time.Time{"c": t0.Add(2 * time.Second)}
	if d := Decide(i); d.Action != ActNone || !d.Next.Equal(t0.Add(7*time.Second)) {
		t.Fatalf("row seen later: %+v", d)
	}
	i.Now = t0.Add(7 * time.Second)
	if d := Decide(i); d.Action != ActMarkDead || d.Plan.New.ID != "c" {
		t.Fatalf("absent: %+v", d)
	}
	// Missing from the view entirely: also absent.
	if d := Decide(in("a", 1, tb, t0.Add(5*time.Second), map[string]Observation{"b": seen(SeenAlive, 2, t0)})); d.Action != ActMarkDead || d.Plan.New.ID != "c" {
		t.Fatalf("missing: %+v", d)
	}
	// Alive in gossip with old metadata (update not yet spread): alive.
	if d := Decide(in("a", 1, tb, t0.Add(time.Hour), map[string]Observation{"b": seen(SeenAlive, 2, t0), "c": seen(SeenAlive, 1, t0)})); d.Action != ActNone || !d.Next.IsZero() {
		t.Fatalf("alive old meta: %+v", d)
	}
	// A life of c that died before registering had advertised c's current
	// incarnation tentatively: the row may be another life's, so only
	// absence counts; a tentative incarnation above the row's ends it.
	tent := seen(SeenDead, 3, t0)
	tent.Tentative = true
	if d := Decide(in("a", 1, tb, t0, map[string]Observation{"b": seen(SeenAlive, 2, t0), "c": tent})); d.Action != ActNone || !d.Next.Equal(t0.Add(timing.AbsentTimeout)) {
		t.Fatalf("tentative dead at the row's incarnation: %+v", d)
	}
	tent.Incarnation = 4
	if d := Decide(in("a", 1, tb, t0, map[string]Observation{"b": seen(SeenAlive, 2, t0), "c": tent})); d.Action != ActMarkDead || d.Plan.New.ID != "c" {
		t.Fatalf("tentative dead above the row's incarnation: %+v", d)
	}
	// Evidence from before this process's epoch counts from the epoch.
	dead := map[string]Observation{"b": seen(SeenAlive, 2, t0), "c": seen(SeenDead, 3, t0)}
	i = in("a", 1, tb, t0.Add(time.Second), dead)
	i.Epoch = t0.Add(3 * time.Second)
	if d := Decide(i); d.Action != ActNone || !d.Next.Equal(i.Epoch) {
		t.Fatalf("epoch: %+v", d)
	}
}

func TestPlanApplyAndEncoding(t *testing.T) {
	tb := abc()
	d := Decide(in("a", 1, tb, t0.Add(time.Second), map[string]Observation{"b": seen(SeenAlive, 2, t0), "c": seen(SeenDead, 3, t0)}))
	nt := d.Plan.Apply()
	if nt.Version != 4 || nt.MaxIncarnation != 3 {
		t.Fatalf("apply: %+v", nt)
	}
	if r, _ := nt.Lookup("c"); r.State != StateDead || r.Incarnation != 3 {
		t.Fatalf("apply row: %+v", r)
	}
	// Header, row and entry round-trip.
	h := nt.header()
	got, err := decodeHeader(encodeHeader(h), small)
	if err != nil || got != h {
		t.Fatalf("header: %+v %v", got, err)
	}
	if z, err := decodeHeader(make([]byte, headerSize), small); err != nil || z.version != 0 || z.format != 0 {
		t.Fatalf("zero header: %+v %v", z, err)
	}
	if !bytes.Equal(encodeHeader(Table{cfg: small}.header()), make([]byte, headerSize)) {
		t.Fatal("a never-written table must compare against zeros")
	}
	r := d.Plan.New
	r.GRPCAddr = "10.0.0.1:7400"
	back, err := decodeRow(encodeRow(r), r.Slot)
	if err != nil || back != r {
		t.Fatalf("row: %+v %v", back, err)
	}
	v, er, err := decodeEntry(encodeEntry(7, r))
	if err != nil || v != 7 || er != r {
		t.Fatalf("entry: %d %+v %v", v, er, err)
	}
	// Refusals.
	bad := encodeHeader(h)
	bad[0] = 'x'
	if _, err := decodeHeader(bad, small); !errors.Is(err, ErrCorruptTable) {
		t.Fatalf("bad magic: %v", err)
	}
	other := small
	other.MaxRows = 5
	if _, err := decodeHeader(encodeHeader(h), other); !errors.Is(err, ErrLayoutMismatch) {
		t.Fatalf("layout: %v", err)
	}
	rb := encodeRow(r)
	rb[0] = 9
	if _, err := decodeRow(rb, 0); !errors.Is(err, ErrCorruptTable) {
		t.Fatalf("bad state: %v", err)
	}
	m := Meta{ID: "a", Incarnation: 9, GRPCAddr: "g:1", GossipAddr: "h:2"}
	if mb, err := decodeMeta(encodeMeta(m)); err != nil || mb != m {
		t.Fatalf("meta: %+v %v", mb, err)
	}
	m.Tentative = true
	if mb, err := decodeMeta(encodeMeta(m)); err != nil || mb != m {
		t.Fatalf("tentative meta: %+v %v", mb, err)
	}
	// Without the flags byte (earlier encoders): registered.
	if mb, err := decodeMeta(encodeMeta(m)[:len(encodeMeta(m))-1]); err != nil || mb.Tentative || mb.Incarnation != 9 {
		t.Fatalf("meta without flags: %+v %v", mb, err)
	}
	if _, err := decodeMeta([]byte{1, 2}); err == nil {
		t.Fatal("short meta accepted")
	}
}

func TestClassify(t *testing.T) {
	a := alive(0, "a", 1)
	cases := []struct {
		old, nw Row
		want    ChangeKind
	}{
		{Row{}, a, Joined},
		{alive(0, "x", 1), alive(0, "a", 2), Joined},
		{a, alive(0, "a", 2), Rejoined},
		{a, Row{Slot: 0, ID: "a", Incarnation: 1, State: StateDead}, Died},
		{a, Row{Slot: 0, ID: "a", Incarnation: 1, State: StateLeft}, Left},
	}
	for _, c := range cases {
		if got := classify(c.old, c.nw); got != c.want {
			t.Errorf("classify(%+v, %+v) = %v, want %v", c.old, c.nw, got, c.want)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	err := Config{ID: "", Bind: "nope", Key: []byte("short"), Gossip: GossipTiming{ProbeInterval: time.Millisecond, ProbeTimeout: time.Second}}.Validate()
	if err == nil {
		t.Fatal("bad config accepted")
	}
	for _, want := range []string{"ID", "Client", "Bind", "Key", "ProbeTimeout"} {
		if !bytes.Contains([]byte(err.Error()), []byte(want)) {
			t.Errorf("Validate does not report %s: %v", want, err)
		}
	}
}

func TestLogBridgeLevels(t *testing.T) {
	var buf bytes.Buffer
	l := newStdLogger(zerolog.New(&buf), "c")
	l.Printf("[DEBUG] memberlist: probing x")
	l.Printf("[WARN] memberlist: refuting a suspect message")
	l.Printf("[ERR] memberlist: failed to decrypt")
	l.Printf("no prefix")
	// An error about memberlist's own closed socket comes from Shutdown.
	l.Printf("[ERR] memberlist: Failed to send UDP ping: write udp 127.0.0.1:8402->127.0.0.1:8401: use of closed network connection")
	// Pings for an older life of this process, and for another process.
	l.Printf("[WARN] memberlist: Got ping for unexpected node 'c/0123' from=127.0.0.1:8401")
	l.Printf("[WARN] memberlist: Got ping for unexpected node c/0123 from=127.0.0.1:8401")
	l.Printf("[WARN] memberlist: Got ping for unexpected node 'cc/0123' from=127.0.0.1:8401")
	want := []string{`"level":"debug"`, `"level":"warn"`, `"level":"error"`, `"level":"info"`, `"level":"debug"`,
		`"level":"debug"`, `"level":"debug"`, `"level":"warn"`}
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != len(want) {
		t.Fatalf("got %d lines: %s", len(lines), buf.String())
	}
	for i, w := range want {
		if !strings.Contains(lines[i], w) || strings.Contains(lines[i], "memberlist: ") || strings.Contains(lines[i], "[") {
			t.Errorf("line %d %s: want %s, prefixes stripped", i, lines[i], w)
		}
	}
}

// TestTableEnded: a life is over when its row is dead or left, replaced by
// a newer incarnation, or gone (its slot reused, which the table's maximum
// incarnation tells from a snapshot older than the life).
func TestTableEnded(t *testing.T) {
	dead := alive(1, "b", 2)
	dead.State = StateDead
	tb := table(5, alive(0, "a", 1), dead, alive(2, "c", 4), alive(3, "d", 5))
	for _, c := range []struct {
		id   string
		inc  uint64
		want bool
	}{
		{"a", 1, false}, // alive
		{"b", 2, true},  // dead
		{"c", 3, true},  // replaced by incarnation 4
		{"c", 4, false},
		{"x", 3, true},  // registered (3 <= max 5), row since reused
		{"x", 6, false}, // registered after this snapshot
		{"x", 0, false}, // no incarnation: nothing known
	} {
		if got := tb.Ended(c.id, c.inc); got != c.want {
			t.Errorf("Ended(%s, %d) = %v, want %v", c.id, c.inc, got, c.want)
		}
	}
}
