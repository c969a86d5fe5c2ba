package client

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"sync"
	"sync/atomic"
)

// Queue errors. Test with errors.Is.
var (
	// ErrFull: the queue has no room for the items. Nothing was enqueued.
	ErrFull = errors.New("tutti: queue full")
	// ErrTrimmed: the position is below the queue's head; its item has
	// been reclaimed (or may be overwritten at any time).
	ErrTrimmed = errors.New("tutti: queue position trimmed")
)

// Queue layout on memnode Memnode, little-endian.
//
// Header, 32 bytes at Base (uint64s):
//
//	+0   head      position of the oldest item kept
//	+8   tail      position the next item takes; tail-head <= capacity
//	+16  capacity  number of slots; 0 while the queue is not created
//	+24  slotSize  bytes per slot
//
// Slots: capacity × slotSize bytes from Base+32; position p lives in slot
// p mod capacity:
//
//	+0   stamp  p+1 (uint64), so a reader can tell the slot holds p
//	+8   len    item length (uint32)
//	+12  item   len bytes; len <= slotSize-12
//
// Positions only grow and are never reused, so consumers can name items by
// position. An enqueue writes its slots and tail in one minitransaction that
// compares tail; a trim writes head comparing head.
const (
	queueHeaderSize = 32
	slotHeaderSize  = 12
	// peekByteBudget bounds the bytes one Peek reads.
	peekByteBudget = 4 << 20
)

// QueueConfig places a queue in a memnode's address space.
type QueueConfig struct {
	// Memnode and Base locate the queue; Base is a multiple of 8. The queue
	// occupies QueueConfig.Bytes() bytes from Base (e.g. a Region from an
	// Allocator).
	Memnode, Base uint64
	// Capacity is the number of slots, >= 1.
	Capacity uint64
	// SlotSize is the size of a slot in bytes: the largest item is
	// SlotSize-12 bytes. At least 13, at most the cluster's per-item
	// limit.
	SlotSize uint64
}

// Bytes is the size of the queue's header and slots, or 0 if it overflows.
func (cfg QueueConfig) Bytes() uint64 {
	if cfg.SlotSize != 0 && cfg.Capacity > (math.MaxUint64-queueHeaderSize)/cfg.SlotSize {
		return 0
	}
	return queueHeaderSize + cfg.Capacity*cfg.SlotSize
}

// QueueState is a snapshot of a queue's positions: items [Head, Tail) are
// kept.
type QueueState struct {
	Head, Tail uint64
}

// Queue is a bounded multi-producer circular queue of items in a memnode,
// with items named by position. Producers append with Enqueue or
// EnqueueBatch; consumers read ranges by position with Peek and reclaim with
// Trim, or take items with Dequeue.
//
// # Outcome unknown
//
// An Enqueue whose minitransaction's outcome is unknown returns an error
// wrapping ErrUnknownOutcome together with the position the attempt would
// have taken. Retrying blindly may enqueue the item twice. Instead call
// Enqueued(ctx, pos, item, err) with that error: false means the attempt
// did not take pos and never will (the call fences it), so it is safe to
// retry. The answer is exact only if no other producer can enqueue an
// identical item, so make items unique, e.g. by starting each with a
// producer ID and sequence number (which also lets consumers drop
// duplicates).
//
// A Queue is safe for concurrent use. It caches the last head and tail it
// saw as a hint, so an uncontended Enqueue is one minitransaction.
type Queue struct {
	c                      *Client
	cfg                    QueueConfig
	maxItems, maxItemBytes int
	// stateFromFailure counts enqueues retried from the state a failed
	// compare answered (tests).
	stateFromFailure atomic.Int64
	mu               struct {
		sync.Mutex
		hint  QueueState
		valid bool
	}
}

// OpenQueue creates the queue described by cfg, or opens it if it exists
// with the same Capacity and SlotSize (ErrInvalid if it differs, or for a
// bad config).
func OpenQueue(ctx context.Context, c *Client, cfg QueueConfig) (*Queue, error) {
	if c == nil {
		return nil, fmt.Errorf("%w: queue: nil client", ErrInvalid)
	}
	maxItems, maxItemBytes := c.limits()
	var errs []error
	if cfg.Base%8 != 0 {
		errs = append(errs, fmt.Errorf("%w: queue: Base %#x is not a multiple of 8", ErrInvalid, cfg.Base))
	}
	if cfg.Capacity == 0 {
		errs = append(errs, fmt.Errorf("%w: queue: Capacity must be >= 1", ErrInvalid))
	}
	if cfg.SlotSize <= slotHeaderSize || cfg.SlotSize > uint64(maxItemBytes) {
		errs = append(errs, fmt.Errorf("%w: queue: SlotSize %d is not in [%d, %d]", ErrInvalid, cfg.SlotSize, slotHeaderSize+1, maxItemBytes))
	}
	if n := cfg.Bytes(); n == 0 || cfg.Base+n < cfg.Base {
		errs = append(errs, fmt.Errorf("%w: queue: %d slots of %d bytes at %#x overflow the address space", ErrInvalid, cfg.Capacity, cfg.SlotSize, cfg.Base))
	}
	if maxItems < 3 {
		errs = append(errs, fmt.Errorf("%w: queue: the cluster allows %d items per minitransaction; a queue needs 3", ErrInvalid, maxItems))
	}
	if errs != nil {
		return nil, errors.Join(errs...)
	}
	q := &Queue{c: c, cfg: cfg, maxItems: maxItems, maxItemBytes: maxItemBytes}
	for {
		if err := ctx.Err(); err != nil {
			return nil, ctxErr("open queue", err)
		}
		r, err := c.Exec(ctx, NewTx().Read(cfg.Memnode, cfg.Base, queueHeaderSize))
		if err != nil {
			return nil, fmt.Errorf("open queue: %w", err)
		}
		h := r.Reads[0]
		if capacity, slot := word(h, 2), word(h, 3); capacity != 0 || slot != 0 {
			if capacity != cfg.Capacity || slot != cfg.SlotSize {
				return nil, fmt.Errorf("%w: open queue: memnode %d address %#x holds a queue of %d slots of %d bytes, not %d of %d",
					ErrInvalid, cfg.Memnode, cfg.Base, capacity, slot, cfg.Capacity, cfg.SlotSize)
			}
			return q, nil
		}
		if word(h, 0)|word(h, 1) != 0 {
			return nil, fmt.Errorf("%w: open queue: memnode %d address %#x does not hold a queue header", ErrInvalid, cfg.Memnode, cfg.Base)
		}
		// Create. Idempotent, so an unknown outcome just looks again.
		_, err = c.Exec(ctx, NewTx().
			Compare(cfg.Memnode, cfg.Base, h).
			Write(cfg.Memnode, cfg.Base+16, words(cfg.Capacity, cfg.SlotSize)))
		if err != nil && !isUnknown(err) {
			return nil, fmt.Errorf("open queue: %w", err)
		}
	}
}

// Config returns the queue's configuration.
func (q *Queue) Config() QueueConfig { return q.cfg }

// MaxItemSize is the largest item, in bytes, a slot holds.
func (q *Queue) MaxItemSize() int { return int(q.cfg.SlotSize - slotHeaderSize) }

func (q *Queue) slotAddr(pos uint64) uint64 {
	return q.cfg.Base + queueHeaderSize + (pos%q.cfg.Capacity)*q.cfg.SlotSize
}

func (q *Queue) setHint(s QueueState) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if !q.mu.valid || s.Tail >= q.mu.hint.Tail {
		q.mu.hint.Tail = s.Tail
	}
	if !q.mu.valid || s.Head >= q.mu.hint.Head {
		q.mu.hint.Head = s.Head
	}
	q.mu.valid = true
}

func (q *Queue) hint() (QueueState, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.mu.hint, q.mu.valid
}

// State reads the queue's head and tail.
func (q *Queue) State(ctx context.Context) (QueueState, error) {
	r, err := q.c.Exec(ctx, NewTx().Read(q.cfg.Memnode, q.cfg.Base, 16))
	if err != nil {
		return QueueState{}, fmt.Errorf("queue state: %w", err)
	}
	s := QueueState{Head: word(r.Reads[0], 0), Tail: word(r.Reads[0], 1)}
	q.setHint(s)
	return s, nil
}

// Enqueue appends item and returns its position. It fails with ErrFull when
// the queue is full and with ErrInvalid when item is larger than
// MaxItemSize; nothing is enqueued then. See the type's documentation for
// ErrUnknownOutcome, with which pos is the position the attempt would have
// taken.
func (q *Queue) Enqueue(ctx context.Context, item []byte) (pos uint64, err error) {
	return q.EnqueueBatch(ctx, [][]byte{item})
}

// EnqueueBatch appends items, in order and all or nothing, in one
// minitransaction, and returns the position of the first. It fails with
// ErrFull when they do not all fit and with ErrInvalid for an empty batch,
// an item larger than MaxItemSize, or a batch larger than the capacity or
// than one minitransaction may carry (the cluster's item limit minus 2);
// nothing is enqueued then. With ErrUnknownOutcome, first is the position
// the attempt would have taken; Enqueued(ctx, first, items[0], err) tells
// whether the whole batch was applied.
func (q *Queue) EnqueueBatch(ctx context.Context, items [][]byte) (first uint64, err error) {
	n := uint64(len(items))
	switch {
	case n == 0:
		return 0, fmt.Errorf("%w: enqueue: no items", ErrInvalid)
	case n > q.cfg.Capacity:
		return 0, fmt.Errorf("%w: enqueue: %d items exceed the queue's capacity of %d", ErrInvalid, n, q.cfg.Capacity)
	case len(items)+2 > q.maxItems:
		return 0, fmt.Errorf("%w: enqueue: %d items exceed the %d one minitransaction may carry", ErrInvalid, n, q.maxItems-2)
	}
	for i, it := range items {
		if len(it) > q.MaxItemSize() {
			return 0, fmt.Errorf("%w: enqueue: item %d is %d bytes; slots hold at most %d", ErrInvalid, i, len(it), q.MaxItemSize())
		}
	}
	mn := q.cfg.Memnode
	s, ok := q.hint()
	fresh := false // s was read by this call
	for {
		if err := ctx.Err(); err != nil {
			return 0, ctxErr("enqueue", err)
		}
		if !ok {
			if s, err = q.State(ctx); err != nil {
				return 0, fmt.Errorf("enqueue: %w", err)
			}
			ok, fresh = true, true
		}
		if s.Tail-s.Head+n > q.cfg.Capacity {
			if !fresh { // the hint's head may be stale
				ok = false
				continue
			}
			return 0, fmt.Errorf("%w: enqueue %d items: head %d, tail %d, capacity %d", ErrFull, n, s.Head, s.Tail, q.cfg.Capacity)
		}
		tx := NewTx().Compare(mn, q.cfg.Base+8, words(s.Tail))
		for i, it := range items {
			p := s.Tail + uint64(i)
			slot := binary.LittleEndian.AppendUint32(words(p+1), uint32(len(it)))
			tx.Write(mn, q.slotAddr(p), append(slot, it...))
		}
		tx.Write(mn, q.cfg.Base+8, words(s.Tail+n))
		if len(items)+3 <= q.maxItems {
			// Answered with a failed compare too: the state to retry from.
			tx.Read(mn, q.cfg.Base, 16)
		}
		res, err := q.c.Exec(ctx, tx)
		if err != nil {
			if isUnknown(err) {
				return s.Tail, fmt.Errorf("enqueue at position %d: %w", s.Tail, err)
			}
			return 0, fmt.Errorf("enqueue: %w", err)
		}
		if res.Committed {
			q.setHint(QueueState{Head: s.Head, Tail: s.Tail + n})
			return s.Tail, nil
		}
		// Another producer moved tail: retry from the state the failed
		// compare saw, or read it again (servers that answer no reads).
		ok, fresh = false, false
		if len(res.Reads) == 1 && len(res.Reads[0]) == 16 {
			s = QueueState{Head: word(res.Reads[0], 0), Tail: word(res.Reads[0], 1)}
			q.setHint(s)
			ok, fresh = true, true
			q.stateFromFailure.Add(1)
		}
	}
}

// Enqueued reports whether the item at pos equals item: after an enqueue at
// pos whose outcome is unknown, true means it was applied (if items are
// unique; see the type's documentation) and false that it was not and may be
// retried. It fails with ErrTrimmed if pos's slot has been reused.
//
// It is a logged step (Tx.Logged), not a read: a read (a Raft ReadIndex)
// does not wait for an enqueue that the leader has proposed but not yet
// committed, so it could answer false for an attempt that applies a moment
// later. Pass the enqueue's error as attempts (any number, any errors:
// UnknownAttempt picks the attempt each names) and the step also fences
// those attempts (Tx.Fence), so that one still on its way to the leader
// is refused when it arrives: false is then final. Without them false
// holds only for what the leader had received. An attempt that ran on
// another memnode than the queue's (Error.Memnode) is refused with
// ErrInvalid before anything is sent: a fence here would not settle it.
// It also compares the header's constant words, so that a queue no longer
// there is an error.
func (q *Queue) Enqueued(ctx context.Context, pos uint64, item []byte, attempts ...error) (bool, error) {
	mn, consts := q.cfg.Memnode, words(q.cfg.Capacity, q.cfg.SlotSize)
	tids, err := attemptsOn(mn, attempts)
	if err != nil {
		return false, fmt.Errorf("enqueued: %w", err)
	}
	tx := NewTx().
		Compare(mn, q.cfg.Base+16, consts).
		Read(mn, q.cfg.Base, 16).Read(mn, q.slotAddr(pos), uint32(q.cfg.SlotSize)).
		Fence(tids...)
	r, err := q.c.Exec(ctx, tx)
	if err != nil {
		return false, fmt.Errorf("enqueued: %w", err)
	}
	if !r.Committed {
		return false, fmt.Errorf("%w: enqueued: memnode %d address %#x no longer holds this queue", ErrInvalid, mn, q.cfg.Base)
	}
	s := QueueState{Head: word(r.Reads[0], 0), Tail: word(r.Reads[0], 1)}
	q.setHint(s)
	if pos >= s.Tail {
		return false, nil
	}
	data, err := q.slotItem(r.Reads[1], pos)
	if err != nil {
		if pos < s.Head {
			return false, fmt.Errorf("%w: enqueued: position %d is below head %d and its slot was reused", ErrTrimmed, pos, s.Head)
		}
		return false, fmt.Errorf("enqueued: %w", err)
	}
	return bytes.Equal(data, item), nil
}

// slotItem decodes slot, which must hold position pos.
func (q *Queue) slotItem(slot []byte, pos uint64) ([]byte, error) {
	stamp, n := word(slot, 0), uint64(binary.LittleEndian.Uint32(slot[8:]))
	if stamp != pos+1 || n > q.cfg.SlotSize-slotHeaderSize {
		return nil, fmt.Errorf("queue at memnode %d address %#x is corrupt: slot of position %d has stamp %d, length %d", q.cfg.Memnode, q.cfg.Base, pos, stamp, n)
	}
	return bytes.Clone(slot[slotHeaderSize : slotHeaderSize+n]), nil
}

// peek reads the header and up to max slots from position from, in one
// atomic read.
func (q *Queue) peek(ctx context.Context, from uint64, limit int) ([][]byte, QueueState, error) {
	n := uint64(limit)
	n = min(n, q.cfg.Capacity, uint64(q.maxItems-1), max(1, peekByteBudget/q.cfg.SlotSize))
	mn := q.cfg.Memnode
	tx := NewTx().Read(mn, q.cfg.Base, 16)
	for i := uint64(0); i < n; i++ {
		tx.Read(mn, q.slotAddr(from+i), uint32(q.cfg.SlotSize))
	}
	r, err := q.c.Exec(ctx, tx)
	if err != nil {
		return nil, QueueState{}, err
	}
	s := QueueState{Head: word(r.Reads[0], 0), Tail: word(r.Reads[0], 1)}
	q.setHint(s)
	switch {
	case from < s.Head:
		return nil, s, fmt.Errorf("%w: position %d is below head %d", ErrTrimmed, from, s.Head)
	case from > s.Tail:
		return nil, s, fmt.Errorf("%w: position %d is beyond tail %d", ErrInvalid, from, s.Tail)
	}
	k := min(n, s.Tail-from)
	items := make([][]byte, 0, k)
	for i := uint64(0); i < k; i++ {
		it, err := q.slotItem(r.Reads[1+i], from+i)
		if err != nil {
			return nil, s, err
		}
		items = append(items, it)
	}
	return items, s, nil
}

// Peek returns the items at positions from, from+1, ... — at most max, and
// fewer when the tail is near or one read would be too large; none when from
// is the tail. It changes nothing. It fails with ErrTrimmed if from is below
// the head and with ErrInvalid if from is beyond the tail or max < 1.
func (q *Queue) Peek(ctx context.Context, from uint64, max int) ([][]byte, error) {
	if max < 1 {
		return nil, fmt.Errorf("%w: peek: max must be >= 1, got %d", ErrInvalid, max)
	}
	items, _, err := q.peek(ctx, from, max)
	if err != nil {
		return nil, fmt.Errorf("peek: %w", err)
	}
	return items, nil
}

// Dequeue takes up to max items from the head: it returns them with the
// position of the first and advances the head past them. Competing
// consumers each get distinct items (the head moves by compare). It returns
// no items when the queue is empty. If the head's update has an unknown
// outcome, Dequeue returns an error wrapping ErrUnknownOutcome and the items
// may or may not have been taken; readers that must not lose items should
// track positions with Peek and Trim instead.
func (q *Queue) Dequeue(ctx context.Context, max int) (from uint64, items [][]byte, err error) {
	if max < 1 {
		return 0, nil, fmt.Errorf("%w: dequeue: max must be >= 1, got %d", ErrInvalid, max)
	}
	s, ok := q.hint()
	for {
		if err := ctx.Err(); err != nil {
			return 0, nil, ctxErr("dequeue", err)
		}
		if !ok {
			if s, err = q.State(ctx); err != nil {
				return 0, nil, fmt.Errorf("dequeue: %w", err)
			}
			ok = true
		}
		items, s2, err := q.peek(ctx, s.Head, max)
		if errors.Is(err, ErrTrimmed) {
			ok = false // the hint was stale
			continue
		}
		if err != nil {
			return 0, nil, fmt.Errorf("dequeue: %w", err)
		}
		if s2.Head != s.Head {
			ok = false
			continue
		}
		if len(items) == 0 {
			return s.Head, nil, nil
		}
		to := s.Head + uint64(len(items))
		res, err := q.c.Exec(ctx, NewTx().
			Compare(q.cfg.Memnode, q.cfg.Base, words(s.Head)).
			Write(q.cfg.Memnode, q.cfg.Base, words(to)))
		if err != nil {
			return 0, nil, fmt.Errorf("dequeue [%d, %d): %w", s.Head, to, err)
		}
		if res.Committed {
			q.setHint(QueueState{Head: to, Tail: s2.Tail})
			return s.Head, items, nil
		}
		ok = false
	}
}

// Trim advances the head to position to, reclaiming the slots of the items
// below it. A head already at or past to is left alone. It fails with
// ErrInvalid if to is beyond the tail.
func (q *Queue) Trim(ctx context.Context, to uint64) error {
	for {
		if err := ctx.Err(); err != nil {
			return ctxErr("trim", err)
		}
		s, err := q.State(ctx)
		if err != nil {
			return fmt.Errorf("trim: %w", err)
		}
		if to <= s.Head {
			return nil
		}
		if to > s.Tail {
			return fmt.Errorf("%w: trim to %d: beyond tail %d", ErrInvalid, to, s.Tail)
		}
		_, err = q.c.Exec(ctx, NewTx().
			Compare(q.cfg.Memnode, q.cfg.Base, words(s.Head)).
			Write(q.cfg.Memnode, q.cfg.Base, words(to)))
		if err != nil && !isUnknown(err) {
			return fmt.Errorf("trim: %w", err)
		}
		// Committed, lost to a concurrent trim, or unknown: the next
		// look at the head decides.
	}
}
