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
}

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
	// VoteBadCmp, else -1.
	FailedCompare int
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
	// MaxItems bounds compares+reads+writes in one Op. Default 1024.
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
