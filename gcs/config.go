package gcs

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/tutti-gcs/tutti/client"
	"github.com/tutti-gcs/tutti/membership"
)

// Config configures a Node. Zero tunables take the defaults listed on each
// field (DefaultConfig).
type Config struct {
	// Client executes minitransactions against the memnodes. Required.
	Client *client.Client
	// ID names this process: unique among the processes sharing groups, at
	// most MaxIDLen bytes, without '#'. With Membership it must equal the
	// membership node's id. Required.
	ID string
	// Membership, optional: members whose process the process table
	// declares Died or Left (or that rejoined under a newer incarnation)
	// are removed from every view; member names carry the membership
	// incarnation. Without it, crashed members stay in views until removed
	// with Group.Remove.
	Membership *membership.Node
	// Logger; disabled if zero.
	Logger zerolog.Logger

	// Memnodes over which group names are hashed to their home memnode and
	// member queues are spread. Default: every memnode in Client.Cluster()
	// when Open runs. Every process must use the same set, and it must not
	// change while groups exist (a group's home would move).
	Memnodes []uint64

	// MaxBatch bounds the messages of one batch (default 512). Batches
	// form only under load: a lone Multicast is sent at once, alone.
	MaxBatch int
	// MaxBatchBytes bounds the payload bytes of one batch (default 512 KiB;
	// at most MaxBatchBytesLimit). A single larger message is sent alone,
	// up to the queue's half and MaxBatchBytesLimit.
	MaxBatchBytes int
	// InlineBytes: batches up to this many encoded bytes travel inside the
	// order record instead of the sender's queue (default 4 KiB, at most
	// 64 KiB; 0 means the default, negative means never inline).
	InlineBytes int
	// LogCapacity is the size in bytes of the order log of groups this
	// node creates (power of two; default 1 MiB). Joiners of an existing
	// group use the group's. Multicasts and joins fill at most 7/8 of it;
	// the rest is kept for view changes that remove members, and a join
	// whose view's removal could not fit there is refused (ErrGroupFull).
	LogCapacity uint64
	// MaxMembers is the number of member slots of groups this node creates
	// (default 64).
	MaxMembers int
	// QueueCapacity is the size in bytes of each member's queue ring
	// (default 16 MiB; at least 2×MaxBatchBytes+64). Blobs stay in the
	// queue until every member delivered them and the log was trimmed
	// (GCInterval), so the queue bounds a sender's throughput to about
	// QueueCapacity per trim lag; the sender also keeps its blobs in
	// memory until its own delivery takes them, at most QueueCapacity.
	// Up to two queue writes of at most 2 MiB each are in flight, so
	// less than about 8 MiB stalls a saturated sender on trimming.
	// Queues are allocated in each memnode's [AllocBase, AllocLimit)
	// (1 GiB): with 16 MiB queues at most about 60 memberships per
	// memnode, over all groups, can exist at once; lower it for many
	// small groups.
	QueueCapacity uint64
	// ReadChunk bounds the order-log bytes one delivery read fetches
	// (default 256 KiB).
	ReadChunk int

	// PollMin and PollMax bound the adaptive poll of the order log's tail
	// when the cluster serves no watch stream: after finding nothing the
	// wait doubles from PollMin up to PollMax (defaults 200µs and 20ms).
	// With a watch stream the poll is only a backup, every
	// max(PollMax, 100ms). Local multicasts and view changes wake the
	// delivery of this node's members at once.
	PollMin, PollMax time.Duration
	// GCInterval is how often members publish their delivered position,
	// the oldest member trims the log and reclaims removed members' queues,
	// and failures confirmed by Membership are checked (default 50ms).
	GCInterval time.Duration
	// IdleGCInterval: while a member's housekeeping finds nothing to do
	// (nothing delivered, the metadata unchanged, nobody dead, leaving or
	// to reclaim), its rounds back off from GCInterval to this (default
	// 1s). Delivery, and with Membership a change of the process table,
	// bring it back to GCInterval at once. Stability of an idle group is
	// therefore at most IdleGCInterval old.
	IdleGCInterval time.Duration
	// TakeoverTimeout: a member at rank position p among the live members
	// proposes a pending removal after p×TakeoverTimeout (default 1s).
	TakeoverTimeout time.Duration

	// Now is the clock of the protocol's timeouts (removal takeover,
	// giving up on a stuck leaver) and of queue placement; time.Now if
	// nil. Tests inject a fake one to replay those decisions. Waits and
	// polls use timers of the runtime.
	Now func() time.Time
}

// maxTxWrite bounds the bytes one minitransaction of gcs writes: a queue
// write (several blobs), a link (records) and hence one blob. Memnodes
// reject requests of more than 4 MiB encoded (memnode/service
// DefaultMaxRequestBytes, which ClusterInfo does not announce); 2 MiB
// leaves room for the encoding. Items are split at the limit the cluster
// announces (Node.itemMax).
const maxTxWrite = 2 << 20

// MaxBatchBytesLimit is the largest Config.MaxBatchBytes (the encoded
// bytes of a batch: a 4-byte length and the payload per message), so the
// largest message Multicast accepts is MaxBatchBytesLimit-4 bytes: one
// blob written by one minitransaction.
const MaxBatchBytesLimit = maxTxWrite - blobHeader - blobTrailer - 8

// DefaultConfig holds the defaults of the tunables.
var DefaultConfig = Config{
	MaxBatch:        512,
	MaxBatchBytes:   512 << 10,
	InlineBytes:     4 << 10,
	LogCapacity:     1 << 20,
	MaxMembers:      64,
	QueueCapacity:   16 << 20,
	ReadChunk:       256 << 10,
	PollMin:         200 * time.Microsecond,
	PollMax:         20 * time.Millisecond,
	GCInterval:      50 * time.Millisecond,
	IdleGCInterval:  time.Second,
	TakeoverTimeout: time.Second,
}

func (c *Config) defaults() {
	d := DefaultConfig
	if c.MaxBatch == 0 {
		c.MaxBatch = d.MaxBatch
	}
	if c.MaxBatchBytes == 0 {
		c.MaxBatchBytes = d.MaxBatchBytes
	}
	if c.InlineBytes == 0 {
		c.InlineBytes = d.InlineBytes
	}
	if c.LogCapacity == 0 {
		c.LogCapacity = d.LogCapacity
	}
	if c.MaxMembers == 0 {
		c.MaxMembers = d.MaxMembers
	}
	if c.QueueCapacity == 0 {
		c.QueueCapacity = d.QueueCapacity
	}
	if c.ReadChunk == 0 {
		c.ReadChunk = d.ReadChunk
	}
	if c.PollMin == 0 {
		c.PollMin = d.PollMin
	}
	if c.PollMax == 0 {
		c.PollMax = d.PollMax
	}
	if c.GCInterval == 0 {
		c.GCInterval = d.GCInterval
	}
	if c.IdleGCInterval == 0 {
		c.IdleGCInterval = d.IdleGCInterval
	}
	if c.TakeoverTimeout == 0 {
		c.TakeoverTimeout = d.TakeoverTimeout
	}
	if c.Now == nil {
		c.Now = time.Now
	}
}

// Validate reports every problem with c (after defaults are applied).
func (c Config) Validate() error {
	var errs []error
	add := func(format string, a ...any) {
		errs = append(errs, fmt.Errorf("%w: "+format, append([]any{ErrInvalid}, a...)...))
	}
	if c.Client == nil {
		add("Client is required")
	}
	if c.ID == "" || len(c.ID) > MaxIDLen || strings.Contains(c.ID, "#") {
		add("ID %q must be 1..%d bytes without '#'", c.ID, MaxIDLen)
	}
	if c.Membership != nil && c.Membership.ID() != c.ID {
		add("ID %q differs from the membership node's id %q", c.ID, c.Membership.ID())
	}
	if c.MaxBatch < 1 || c.MaxBatch > 1<<16 {
		add("MaxBatch %d not in [1, 65536]", c.MaxBatch)
	}
	if c.MaxBatchBytes < 1 || c.MaxBatchBytes > MaxBatchBytesLimit {
		add("MaxBatchBytes %d not in [1, %d] (a batch is written by one minitransaction)", c.MaxBatchBytes, MaxBatchBytesLimit)
	}
	if c.InlineBytes > 64<<10 {
		add("InlineBytes %d > %d", c.InlineBytes, 64<<10)
	}
	if c.LogCapacity < 4096 || c.LogCapacity&(c.LogCapacity-1) != 0 {
		add("LogCapacity %d must be a power of two >= 4096", c.LogCapacity)
	}
	if c.MaxMembers < 1 || c.MaxMembers > 1024 {
		add("MaxMembers %d not in [1, 1024]", c.MaxMembers)
	}
	if c.QueueCapacity < 2*uint64(max(c.MaxBatchBytes, 0))+64 {
		add("QueueCapacity %d < 2*MaxBatchBytes+64", c.QueueCapacity)
	}
	if c.ReadChunk < 4096 {
		add("ReadChunk %d < 4096", c.ReadChunk)
	}
	if c.PollMin <= 0 || c.PollMax < c.PollMin {
		add("poll bounds %v..%v", c.PollMin, c.PollMax)
	}
	if c.IdleGCInterval < 0 {
		add("IdleGCInterval must be >= 0")
	}
	if c.GCInterval <= 0 || c.TakeoverTimeout <= 0 {
		add("GCInterval and TakeoverTimeout must be > 0")
	}
	return errors.Join(errs...)
}

// JoinOptions configures one membership of a group.
type JoinOptions struct {
	// Snapshot is called on the provider (the oldest member) when it
	// delivers the view that admits a joiner which has Restore: after the
	// application received that *View from Events and before any later
	// event is sent, so with a sequential event loop the state reflects
	// exactly the messages delivered before the view. It runs on the
	// delivery goroutine and may run concurrently with the application's
	// handling of that *View. nil: joiners get no state (Restore is not
	// called).
	Snapshot func() ([]byte, error)
	// Restore is called on the joiner, inside Join, with the provider's
	// snapshot, before any event of its first view. nil: the joiner asks
	// for no state. Not called for the first member of a group.
	Restore func([]byte) error
}
