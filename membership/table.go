package membership

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/tutti-gcs/tutti/client"
)

// The process table's encoding, format 1. All integers are little-endian.
// See doc.go for the picture.
const (
	tableMagic  = "tuttiPT\x00" // first 8 bytes of the header
	tableFormat = 1

	headerSize   = 32 // bytes compared and written by every change
	headerRegion = 64 // rows start this far from the base (room to grow)
	rowSize      = 256
	entryHead    = 16
	entrySize    = entryHead + rowSize // one change-log entry

	// MaxIDLen bounds a process id; MaxAddrLen bounds each address.
	MaxIDLen   = 64
	MaxAddrLen = 80

	rowOffID     = 32
	rowOffGRPC   = rowOffID + MaxIDLen
	rowOffGossip = rowOffGRPC + MaxAddrLen
)

// Errors of the table layer. Test with errors.Is.
var (
	// ErrCorruptTable: the bytes at the table's address are not a process
	// table of a format this code understands.
	ErrCorruptTable = errors.New("membership: corrupt process table")
	// ErrLayoutMismatch: the table was created with another MaxRows or
	// LogSize than this process is configured with.
	ErrLayoutMismatch = errors.New("membership: process table layout mismatch")
	// ErrTableFull: every row holds an alive process; no row can be reused.
	ErrTableFull = errors.New("membership: process table full")
)

// State is a row's state in the process table. Values are part of the wire
// format: only append.
type State uint8

// Row states.
const (
	StateEmpty   State = 0 // the slot was never used
	StateAlive   State = 1
	StateSuspect State = 2 // reserved in format 1: never written; readers treat it as alive
	StateDead    State = 3 // declared dead by a surviving process (or found absent)
	StateLeft    State = 4 // left gracefully
)

func (s State) String() string {
	switch s {
	case StateEmpty:
		return "empty"
	case StateAlive:
		return "alive"
	case StateSuspect:
		return "suspect"
	case StateDead:
		return "dead"
	case StateLeft:
		return "left"
	}
	return fmt.Sprintf("state(%d)", uint8(s))
}

// Live reports whether a process in this state counts as a member.
func (s State) Live() bool { return s == StateAlive || s == StateSuspect }

// TableConfig places the process table in a memnode's address space.
type TableConfig struct {
	// Memnode holding the table.
	Memnode uint64
	// Base is the table's first byte. The region is Size() bytes long.
	Base uint64
	// MaxRows is the number of process rows (at most 4096: the rows are
	// read as one item, which must fit the memnodes' MaxItemBytes).
	MaxRows int
	// LogSize is the number of change-log entries kept (a ring indexed by
	// version); an observer that falls further behind re-reads the rows.
	LogSize int
}

// DefaultTable places the table on memnode 0 at 0x7000_0000 with 256 rows
// and 64 log entries (about 82 KiB). The lead will align it with the
// directory layout of memnode 0 (DESIGN §2); every process of a cluster must
// use the same TableConfig.
var DefaultTable = TableConfig{Memnode: 0, Base: 0x7000_0000, MaxRows: 256, LogSize: 64}

// Validate reports every problem with c.
func (c TableConfig) Validate() error {
	var errs []error
	if c.MaxRows <= 0 || c.MaxRows > 4096 {
		errs = append(errs, fmt.Errorf("table: MaxRows must be in [1, 4096], got %d", c.MaxRows))
	}
	if c.LogSize <= 0 || c.LogSize > 4096 {
		errs = append(errs, fmt.Errorf("table: LogSize must be in [1, 4096], got %d", c.LogSize))
	}
	if c.Base+c.Size() < c.Base {
		errs = append(errs, fmt.Errorf("table: region at %#x overflows the address space", c.Base))
	}
	return errors.Join(errs...)
}

// Size is the number of bytes the table occupies from Base.
func (c TableConfig) Size() uint64 {
	return headerRegion + uint64(c.MaxRows)*rowSize + uint64(c.LogSize)*entrySize
}

func (c TableConfig) rowAddr(slot int) uint64 { return c.Base + headerRegion + uint64(slot)*rowSize }

func (c TableConfig) entryAddr(version uint64) uint64 {
	return c.Base + headerRegion + uint64(c.MaxRows)*rowSize + (version%uint64(c.LogSize))*entrySize
}

// Row is one process in the table.
type Row struct {
	// Slot is the row's index in the table (not encoded: its position).
	Slot int
	// ID is the process id (memberlist node name), at most MaxIDLen bytes.
	ID string
	// Incarnation numbers this life of the process. Incarnations are unique
	// across the table: a (re)start takes the table's maximum + 1.
	Incarnation uint64
	State       State
	// Since is when the row took this state (writer's clock, Unix ns).
	Since time.Time
	// By is the incarnation of the process that wrote the row: the row's
	// own incarnation for joins and leaves, the decider's for deaths.
	By uint64
	// GRPCAddr and GossipAddr are where the process serves gRPC and gossip.
	GRPCAddr   string
	GossipAddr string
}

// Table is a snapshot of the process table at one version.
type Table struct {
	// Version counts changes: every minitransaction that changes the table
	// writes Version+1. 0 is the never-written table.
	Version uint64
	// MaxIncarnation is the largest incarnation ever handed out.
	MaxIncarnation uint64
	// Rows are the used slots, in slot order.
	Rows []Row

	format uint16 // 0 while the table was never written
	cfg    TableConfig
}

// Lookup returns the row of process id.
func (t Table) Lookup(id string) (Row, bool) {
	for _, r := range t.Rows {
		if r.ID == id {
			return r, true
		}
	}
	return Row{}, false
}

// Ended reports whether t shows the life (id, inc) of a process over: its
// row is dead or left under that incarnation, a newer incarnation replaced
// it, or the row is gone. A row disappears only when registration reuses
// the slot of a dead or left process (the table was full), so a life t
// knows of (inc <= MaxIncarnation: incarnations are handed out in order)
// without a row ended. A life t does not know yet (an older snapshot than
// its registration) has not.
func (t Table) Ended(id string, inc uint64) bool {
	r, ok := t.Lookup(id)
	if !ok {
		return inc != 0 && inc <= t.MaxIncarnation
	}
	return r.Incarnation > inc || (r.Incarnation == inc && !r.State.Live())
}

// Live returns the rows of live processes in rank order: lowest incarnation
// first (the oldest member), ties (impossible in a well-formed table) by id.
func (t Table) Live() []Row {
	var out []Row
	for _, r := range t.Rows {
		if r.State.Live() {
			out = append(out, r)
		}
	}
	sort.Slice(out, func(i, j int) bool { return rankLess(out[i], out[j]) })
	return out
}

func rankLess(a, b Row) bool {
	if a.Incarnation != b.Incarnation {
		return a.Incarnation < b.Incarnation
	}
	return a.ID < b.ID
}

func (t Table) clone() Table {
	t.Rows = append([]Row(nil), t.Rows...)
	return t
}

// set installs r (r.Slot) in t, keeping slot order.
func (t *Table) set(r Row) {
	i := sort.Search(len(t.Rows), func(i int) bool { return t.Rows[i].Slot >= r.Slot })
	if i < len(t.Rows) && t.Rows[i].Slot == r.Slot {
		t.Rows[i] = r
		return
	}
	t.Rows = append(t.Rows, Row{})
	copy(t.Rows[i+1:], t.Rows[i:])
	t.Rows[i] = r
}

func (t Table) slotRow(slot int) Row {
	for _, r := range t.Rows {
		if r.Slot == slot {
			return r
		}
	}
	return Row{Slot: slot}
}

type header struct {
	format         uint16
	maxRows        uint16
	logSize        uint16
	version        uint64
	maxIncarnation uint64
}

func (t Table) header() header {
	return header{t.format, uint16(t.cfg.MaxRows), uint16(t.cfg.LogSize), t.Version, t.MaxIncarnation}
}

// encodeHeader: magic[8] | format u16 | flags u16 (0) | maxRows u16 |
// logSize u16 | version u64 | maxIncarnation u64. A never-written table
// (format 0) encodes as 32 zero bytes, which is what the memnode holds.
func encodeHeader(h header) []byte {
	b := make([]byte, headerSize)
	if h.format == 0 {
		return b
	}
	copy(b, tableMagic)
	binary.LittleEndian.PutUint16(b[8:], h.format)
	binary.LittleEndian.PutUint16(b[12:], h.maxRows)
	binary.LittleEndian.PutUint16(b[14:], h.logSize)
	binary.LittleEndian.PutUint64(b[16:], h.version)
	binary.LittleEndian.PutUint64(b[24:], h.maxIncarnation)
	return b
}

func decodeHeader(b []byte, cfg TableConfig) (header, error) {
	if len(b) != headerSize {
		return header{}, fmt.Errorf("%w: header is %d bytes", ErrCorruptTable, len(b))
	}
	if bytes.Equal(b, make([]byte, headerSize)) {
		return header{maxRows: uint16(cfg.MaxRows), logSize: uint16(cfg.LogSize)}, nil
	}
	if string(b[:8]) != tableMagic {
		return header{}, fmt.Errorf("%w: bad magic %q at %d:%#x", ErrCorruptTable, b[:8], cfg.Memnode, cfg.Base)
	}
	h := header{
		format:         binary.LittleEndian.Uint16(b[8:]),
		maxRows:        binary.LittleEndian.Uint16(b[12:]),
		logSize:        binary.LittleEndian.Uint16(b[14:]),
		version:        binary.LittleEndian.Uint64(b[16:]),
		maxIncarnation: binary.LittleEndian.Uint64(b[24:]),
	}
	if h.format != tableFormat {
		return header{}, fmt.Errorf("%w: format %d, this code reads format %d", ErrCorruptTable, h.format, tableFormat)
	}
	if int(h.maxRows) != cfg.MaxRows || int(h.logSize) != cfg.LogSize {
		return header{}, fmt.Errorf("%w: table has %d rows and %d log entries, configured %d and %d",
			ErrLayoutMismatch, h.maxRows, h.logSize, cfg.MaxRows, cfg.LogSize)
	}
	return h, nil
}

// encodeRow: state u8 | idLen u8 | grpcLen u8 | gossipLen u8 | reserved u32 |
// incarnation u64 | since i64 (Unix ns) | by u64 | id[64] | grpc[80] |
// gossip[80]. An empty slot is 256 zero bytes.
func encodeRow(r Row) []byte {
	b := make([]byte, rowSize)
	if r.State == StateEmpty {
		return b
	}
	b[0] = byte(r.State)
	b[1] = byte(len(r.ID))
	b[2] = byte(len(r.GRPCAddr))
	b[3] = byte(len(r.GossipAddr))
	binary.LittleEndian.PutUint64(b[8:], r.Incarnation)
	binary.LittleEndian.PutUint64(b[16:], uint64(r.Since.UnixNano()))
	binary.LittleEndian.PutUint64(b[24:], r.By)
	copy(b[rowOffID:rowOffID+MaxIDLen], r.ID)
	copy(b[rowOffGRPC:rowOffGRPC+MaxAddrLen], r.GRPCAddr)
	copy(b[rowOffGossip:rowOffGossip+MaxAddrLen], r.GossipAddr)
	return b
}

func decodeRow(b []byte, slot int) (Row, error) {
	if len(b) != rowSize {
		return Row{}, fmt.Errorf("%w: row %d is %d bytes", ErrCorruptTable, slot, len(b))
	}
	r := Row{Slot: slot, State: State(b[0])}
	if r.State == StateEmpty {
		return r, nil
	}
	if r.State > StateLeft {
		return Row{}, fmt.Errorf("%w: row %d has state %d", ErrCorruptTable, slot, b[0])
	}
	il, gl, sl := int(b[1]), int(b[2]), int(b[3])
	if il == 0 || il > MaxIDLen || gl > MaxAddrLen || sl > MaxAddrLen {
		return Row{}, fmt.Errorf("%w: row %d has bad lengths %d/%d/%d", ErrCorruptTable, slot, il, gl, sl)
	}
	r.Incarnation = binary.LittleEndian.Uint64(b[8:])
	r.Since = time.Unix(0, int64(binary.LittleEndian.Uint64(b[16:])))
	r.By = binary.LittleEndian.Uint64(b[24:])
	r.ID = string(b[rowOffID : rowOffID+il])
	r.GRPCAddr = string(b[rowOffGRPC : rowOffGRPC+gl])
	r.GossipAddr = string(b[rowOffGossip : rowOffGossip+sl])
	return r, nil
}

// encodeEntry: version u64 | slot u32 | reserved u32 | row[256]. The entry
// for version v sits in ring slot v mod LogSize.
func encodeEntry(version uint64, r Row) []byte {
	b := make([]byte, 0, entrySize)
	b = binary.LittleEndian.AppendUint64(b, version)
	b = binary.LittleEndian.AppendUint32(b, uint32(r.Slot))
	b = binary.LittleEndian.AppendUint32(b, 0)
	return append(b, encodeRow(r)...)
}

func decodeEntry(b []byte) (version uint64, r Row, err error) {
	if len(b) != entrySize {
		return 0, Row{}, fmt.Errorf("%w: log entry is %d bytes", ErrCorruptTable, len(b))
	}
	version = binary.LittleEndian.Uint64(b)
	r, err = decodeRow(b[entryHead:], int(binary.LittleEndian.Uint32(b[8:])))
	return version, r, err
}

// Plan is one change of the table: the minitransaction that moves it from
// version Base.Version to Base.Version+1 by replacing one row. It is data;
// Tx turns it into a minitransaction.
type Plan struct {
	// Base is the table the plan was made from.
	Base Table
	// Old is the row replaced (zero with Slot set for an empty slot); New
	// is what takes its place (New.Slot == Old.Slot).
	Old, New Row
}

// Version is the table version the plan installs.
func (p Plan) Version() uint64 { return p.Base.Version + 1 }

func (p Plan) newHeader() header {
	h := p.Base.header()
	h.format = tableFormat
	h.version++
	h.maxIncarnation = max(h.maxIncarnation, p.New.Incarnation)
	return h
}

// Tx is the plan's minitransaction: compare the header (version) and the
// old row (incarnation and state), write the new header, row and log entry.
// Comparing the whole header makes every change exact: no two observers
// can both move the table from version v.
func (p Plan) Tx() *client.Tx {
	c := p.Base.cfg
	return client.NewTx().
		Compare(c.Memnode, c.Base, encodeHeader(p.Base.header())).
		Compare(c.Memnode, c.rowAddr(p.Old.Slot), encodeRow(p.Old)).
		Write(c.Memnode, c.Base, encodeHeader(p.newHeader())).
		Write(c.Memnode, c.rowAddr(p.New.Slot), encodeRow(p.New)).
		Write(c.Memnode, c.entryAddr(p.Version()), encodeEntry(p.Version(), p.New))
}

// Apply returns the table after the plan.
func (p Plan) Apply() Table {
	t := p.Base.clone()
	h := p.newHeader()
	t.format, t.Version, t.MaxIncarnation = h.format, h.version, h.maxIncarnation
	t.set(p.New)
	return t
}

// readTableTx reads the header and every row.
func readTableTx(c TableConfig) *client.Tx {
	return client.NewTx().
		Read(c.Memnode, c.Base, headerSize).
		Read(c.Memnode, c.rowAddr(0), uint32(c.MaxRows*rowSize))
}

func decodeTable(c TableConfig, hb, rows []byte) (Table, error) {
	h, err := decodeHeader(hb, c)
	if err != nil {
		return Table{}, err
	}
	t := Table{Version: h.version, MaxIncarnation: h.maxIncarnation, format: h.format, cfg: c}
	if len(rows) != c.MaxRows*rowSize {
		return Table{}, fmt.Errorf("%w: rows are %d bytes", ErrCorruptTable, len(rows))
	}
	for s := 0; s < c.MaxRows; s++ {
		r, err := decodeRow(rows[s*rowSize:(s+1)*rowSize], s)
		if err != nil {
			return Table{}, err
		}
		if r.State != StateEmpty {
			t.Rows = append(t.Rows, r)
		}
	}
	return t, nil
}
