package replication

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/rs/zerolog"
	"go.etcd.io/raft/v3/raftpb"
)

// Command is one committed command handed to a StateMachine. Data is owned by
// the state machine only for the duration of the Apply call.
type Command struct {
	// Index is the Raft index of the entry that carried the command. Several
	// commands may share an index (proposals are batched into one entry).
	Index uint64
	Data  []byte
	// NoResult: nobody waits for this command's result (another host
	// proposed it, or its proposer gave up), so Apply may return nil for
	// it and skip building it. Applying it must change the state exactly
	// as with a result.
	NoResult bool
}

// StateMachine is what a Raft group replicates. All methods are called from
// one goroutine at a time (the worker that owns the group), never concurrently.
type StateMachine interface {
	// Apply applies committed commands in log order and returns one result per
	// command (same length as cmds). It must be deterministic.
	Apply(cmds []Command) [][]byte
	// Query answers a read-only request against the current state without
	// changing it. The host calls it only after the group has applied at least
	// the ReadIndex of the read, and hands the result to that read's
	// caller alone (who may recycle it).
	Query(q []byte) []byte
	// Snapshot returns the full state as of the last applied command. The
	// host keeps the returned slice only until it is stored (in a snapshot
	// file, or in the log engine if empty; a large one by another
	// goroutine while Apply goes on), which ends before it calls Snapshot
	// again, and reads it back from there to send it. So a state machine
	// may reuse its buffer at its next Snapshot, and must not change it
	// before.
	Snapshot() ([]byte, error)
	// Restore replaces the whole state with a snapshot.
	Restore(data []byte) error
}

// Transport moves Raft messages between hosts. Implementations: the gRPC
// transport (grpc.go) and the in-memory fault network (FaultNetwork).
type Transport interface {
	// Send hands messages for other hosts to the transport. It must not block
	// on the network; messages may be dropped (Raft retries). Messages of type
	// MsgSnap are sent on a separate path and their outcome reported through
	// the Handler's ReportSnapshot.
	Send(msgs []GroupMessage)
	// Start begins delivering incoming messages to h.
	Start(h Handler) error
	// Close stops the transport.
	Close() error
}

// GroupMessage is a raft message with the group it belongs to.
type GroupMessage struct {
	Group uint64
	Msg   *raftpb.Message
}

// Handler receives what a Transport delivers. Implemented by Host.
type Handler interface {
	// HandleMessages delivers incoming messages; must not block long.
	HandleMessages(msgs []GroupMessage)
	// ReportUnreachable tells the host a peer could not be reached.
	ReportUnreachable(group, to uint64)
	// ReportSnapshot tells the host whether a MsgSnap was delivered.
	ReportSnapshot(group, to uint64, ok bool)
}

// Config configures a Host. Durations have the units stated.
type Config struct {
	// ID is this host's id, >0; it is also its Raft replica id in every group.
	ID uint64
	// DataDir holds the shared Pebble log engine. Required.
	DataDir string
	// Transport carries Raft messages. Required.
	Transport Transport
	// Logger; zerolog.Nop() if zero.
	Logger zerolog.Logger
	// TickInterval is the Raft tick; default 10ms.
	TickInterval time.Duration
	// ElectionTicks default 20, HeartbeatTicks default 2.
	ElectionTicks  int
	HeartbeatTicks int
	// Workers is the number of goroutines driving groups; default GOMAXPROCS.
	Workers int
	// SnapshotEntries: take a snapshot and compact the log after this many
	// applied entries since the last snapshot; default 100,000 (the log
	// lives in the engine, so a longer log costs disk and replay time, not
	// memory; a snapshot copies the whole state machine).
	SnapshotEntries uint64
	// SnapshotBytes bounds the log by size as SnapshotEntries does by count:
	// a snapshot is also taken once the entries applied since the last one
	// hold this many bytes, or twice the last snapshot's size if that is
	// larger (so snapshots of a large state machine cost at most half the
	// bytes written to the log). The margin of entries kept behind a
	// snapshot for slow followers holds at most a quarter of it. This bounds
	// the log engine's size and the replay after a restart. Default 256 MiB.
	SnapshotBytes uint64
	// LogCacheBytes bounds the applied entries a group keeps in memory for
	// raft (sending to followers); older ones are read back from the log
	// engine. Default 8 MiB.
	LogCacheBytes uint64
	// NoSync disables fsync (tests only; acknowledged writes may be lost).
	NoSync bool

	// beforeSync, if set, runs in a worker before each engine commit with
	// fsync (tests: hold a cycle in its fsync).
	beforeSync func()
	// beforeSnapWrite, if set, runs before a snapshot's file is written,
	// on the goroutine that writes it (tests: hold the write).
	beforeSnapWrite func()
	// beforeSnapLoad, if set, runs before a snapshot is read back to be
	// sent, on the goroutine that reads it (tests: hold the read).
	beforeSnapLoad func()
	// exciseMaxDefer, if set, replaces how long a truncated log prefix
	// waits for its memtable's flush before it is excised anyway
	// (reclaim.go; tests whose memtables never fill).
	exciseMaxDefer time.Duration
	// segmentInlineMax, segmentTarget and segmentGCInterval, if set
	// (tests), replace segInlineMax (negative: every entry's data goes to
	// a segment), segTarget and segGCInterval (segment.go).
	segmentInlineMax  int
	segmentTarget     int64
	segmentGCInterval time.Duration
	// segmentPressureBytes, if set (tests), replaces segPressureBytes.
	segmentPressureBytes int64
	// MaxProposalBytes bounds one batched entry; default 1 MiB.
	MaxProposalBytes int
}

// DefaultConfig returns a Config with defaults filled in; ID, DataDir and
// Transport must still be set.
func DefaultConfig() Config {
	return Config{
		TickInterval:     10 * time.Millisecond,
		ElectionTicks:    20,
		HeartbeatTicks:   2,
		SnapshotEntries:  100000,
		SnapshotBytes:    256 << 20,
		LogCacheBytes:    8 << 20,
		MaxProposalBytes: 1 << 20,
	}
}

// Errors. Callers test them with errors.Is / errors.As.
var (
	// ErrUnknownGroup: this host holds no replica of the group.
	ErrUnknownGroup = errors.New("replication: unknown group")
	// ErrStopped: the host or group is shutting down; nothing was proposed.
	ErrStopped = errors.New("replication: stopped")
	// ErrUnknownOutcome: the proposal was made but the host cannot tell
	// whether it committed (leadership changed, group stopped).
	ErrUnknownOutcome = errors.New("replication: outcome unknown")
	// ErrTooLarge: the command exceeds MaxProposalBytes.
	ErrTooLarge = errors.New("replication: command too large")
)

// NotLeaderError says this host does not lead the group. Leader is the
// believed leader's host id, 0 if unknown. Nothing was proposed.
type NotLeaderError struct {
	Group  uint64
	Leader uint64
}

func (e *NotLeaderError) Error() string {
	return fmt.Sprintf("replication: host is not leader of group %d (leader %d)", e.Group, e.Leader)
}

// Is lets errors.Is(err, ErrNotLeader) match any NotLeaderError.
func (e *NotLeaderError) Is(target error) bool { return target == ErrNotLeader }

// ErrNotLeader matches every *NotLeaderError with errors.Is.
var ErrNotLeader = errors.New("replication: not leader")

// Compile-time shape of Host's API; see host.go for the implementation.
var _ interface {
	StartGroup(group uint64, peers []uint64, sm StateMachine) error
	Propose(ctx context.Context, group uint64, cmd []byte) ([]byte, error)
	ProposeAsync(group uint64, cmd []byte, done func(result []byte, err error))
	Read(ctx context.Context, group uint64, query []byte) ([]byte, error)
	ReadAsync(group uint64, query []byte, done func(result []byte, err error))
	Leader(group uint64) uint64
	Groups() []uint64
	Close() error
} = (*Host)(nil)
