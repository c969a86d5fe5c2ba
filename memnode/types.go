package memnode

import "errors"

// TID names one minitransaction attempt. Client and Seq make it unique; Time
// is the coordinator's wall clock (Unix ns) when the attempt began, used only
// for age-based garbage collection against the horizon.
type TID struct {
	Client uint64
	Seq    uint64
	Time   int64
}

// Compare is an equality test of the bytes at Addr against Data.
type Compare struct {
	Addr uint64
	Data []byte
}

// Read asks for Len bytes at Addr.
type Read struct {
	Addr uint64
	Len  uint32
}

// Write stores Data at Addr.
type Write struct {
	Addr uint64
	Data []byte
}

// Op is the part of a minitransaction that concerns one memnode.
type Op struct {
	Compares []Compare
	Reads    []Read
	Writes   []Write
	// Appends (Exec only) add data at the end of rings whose counters live
	// in the address space; the memnode takes the position when it applies
	// the entry (doc.go, "Append").
	Appends []Append
	// Relocs (only with Appends) patch an append's old counter value into
	// the data of an append or write item before it is written.
	Relocs []Reloc
}

// Append adds Data at the end of a ring whose counters live in the address
// space (one-phase Exec only; doc.go, "Append", gives the exact rules).
// Counters are u64 little-endian words.
type Append struct {
	// Tail is the address of the counter t: bytes ever appended (positions
	// only grow). Data is placed at position t, and t advances by len(Data).
	Tail uint64
	// Head is the address of the counter h: positions below h are free.
	// The memnode only reads it.
	Head uint64
	// Limit: the append is refused (VoteBadCmp) unless
	// t+len(Data)-h <= Limit, taken as a signed difference (h past t+len(Data)
	// passes), and unless t+len(Data) does not overflow 64 bits. Limit <= Size.
	Limit uint64
	// Ring is the address of the ring's first byte; position p lives at
	// Ring + p mod Size, so Data may wrap to the ring's start (two pieces).
	Ring uint64
	// Size is the ring's length in bytes: a power of two.
	Size uint64
	// Count is the address of a second counter c advanced by Add (mod
	// 2^64); 0 means none, and then Add must be 0.
	Count uint64
	Add   uint64
	// Data is 1..min(Size, MaxItemBytes) bytes.
	Data []byte
}

// Reloc adds an append's old counter value (mod 2^64) to the u64
// little-endian word at [Off, Off+8) of the data of an append or write item
// of the same Op, in a copy made before it is written (the caller's slices
// are never changed): records that contain their own position, or a slot
// that names it.
type Reloc struct {
	Append uint32 // index in Op.Appends whose old values are the source
	Count  bool   // source: that append's old c (false: its old t)
	Write  bool   // target: Op.Writes[Item].Data (false: Op.Appends[Item].Data)
	Item   uint32
	Off    uint32
}

// Appended says where an append went: the old values of its counters, t
// (the position where Data starts) and c (0 if it has no Count).
type Appended struct{ Tail, Count uint64 }

// Kind is the type of a log entry. Values are part of the on-disk format:
// append only.
type Kind uint8

const (
	KindExec             Kind = 1 // one-phase: lock check, compare, read, write
	KindPrepare          Kind = 2 // phase one of two-phase commit
	KindCommit           Kind = 3
	KindAbort            Kind = 4
	KindAbortUnlessVoted Kind = 5 // recovery: force abort if no vote yet
)

// Entry is one command in a memnode's Raft log.
type Entry struct {
	Kind Kind
	// Now is the proposing leader's clock (Unix ns). It is the only time the
	// state machine ever sees.
	Now int64
	TID TID
	// Participants lists the memnode ids of a two-phase minitransaction
	// (Prepare only), so recovery can find the others: at least one, none
	// twice, this memnode among them (CheckParticipants).
	Participants []uint64
	Op           Op
	// More (Commit and Abort only) lists further tids decided the same
	// way, applied in order after TID in the same step. Coordinators batch
	// their decisions this way; the Result is TID's.
	More []TID
	// Commits and Aborts (any kind) are decisions of other tids carried by
	// this entry: Apply first commits each tid of Commits, then aborts each
	// of Aborts, exactly as a KindCommit / KindAbort entry of that tid
	// would, and then applies the entry's own step; the Result is the
	// entry's own. An invalid entry applies none of them.
	Commits []TID
	Aborts  []TID
	// Fences (Exec only) names one-phase attempts that must not apply on
	// this memnode from now on if they have not already: Apply records
	// each tid that is neither in doubt nor decided here (and not past the
	// horizon) as forced-abort, after the carried decisions and before the
	// entry's own step, and an Exec of a forced tid votes BAD-FORCED and
	// changes nothing. A logged read carrying the tid of an attempt whose
	// answer was lost thus settles it for good: what the read does not
	// show can no longer commit, even if the attempt was still on its way
	// to the leader. Fencing an in-doubt or decided tid changes nothing.
	Fences []TID
	// NoReads is not part of the encoding: the caller discards the
	// Result's reads (a replica whose result nobody waits for), so Apply
	// leaves Result.Reads nil instead of copying them. Everything else,
	// state and vote included, is the same.
	NoReads bool
}

// Vote is a participant's answer. Values are part of the wire format.
type Vote uint8

const (
	VoteOK        Vote = 1
	VoteBadLock   Vote = 2
	VoteBadForced Vote = 3
	VoteBadCmp    Vote = 4
)

// Outcome of a decided two-phase minitransaction.
type Outcome uint8

const (
	OutcomeUnknown   Outcome = 0
	OutcomeCommitted Outcome = 1
	OutcomeAborted   Outcome = 2
	// OutcomeExpired: the tid is older than the horizon (TID.Time <
	// clock-Horizon) and not in doubt here, so whatever this participant
	// knew of it (its vote, its outcome, a forced abort) may have been
	// forgotten. It answers Commit, Abort and AbortUnlessVoted of such a
	// tid, with no vote: the participant cannot tell whether it voted OK or
	// how the tid was decided, and must not be counted as a vote either way.
	OutcomeExpired Outcome = 3
)

// Result is what applying (or querying) an entry returns.
type Result struct {
	Vote Vote
	// FailedCompare is the index of the first failed compare with
	// VoteBadCmp, else -1. An append refused by its Limit fails as the
	// compare len(Op.Compares)+i, i its index in Op.Appends.
	FailedCompare int
	// Appended holds one element per Op.Appends item, with VoteOK only.
	Appended []Appended
	// Reads holds one slice per read item with VoteOK, and with VoteBadCmp
	// from Exec and Query (one participant: the reads are taken in the same
	// step as the failed compare, so a caller can retry a compare-and-swap
	// without reading first). A Prepare's BAD-CMP carries none: one
	// participant's reads are not a view of the whole minitransaction.
	Reads [][]byte
	// Outcome answers Commit/Abort/AbortUnlessVoted (and Prepare of an
	// already decided tid); OutcomeExpired when the tid is past the horizon
	// and not in doubt.
	Outcome Outcome
	// Err is non-nil when the entry was invalid; nothing was applied.
	Err error
}

// Config bounds a memnode. Sizes in bytes.
type Config struct {
	// Size of the address space; addresses are [0, Size). Default 1<<40.
	Size uint64
	// MaxItemBytes bounds one item's length. Default 1<<20 (1 MiB).
	MaxItemBytes uint32
	// MaxItems bounds compares+reads+writes+appends in one Op, and relocs
	// apart. Default 1024.
	MaxItems int
	// Horizon (ns): tids older than Now-Horizon are refused by Prepare and
	// dropped from the forced-abort and decided sets. Default 1 minute.
	Horizon int64
}

// Errors, wrapped with detail; test with errors.Is.
var (
	ErrInvalid = errors.New("memnode: invalid request")
	ErrCorrupt = errors.New("memnode: corrupt encoding")
	ErrVersion = errors.New("memnode: unsupported format version")
)
