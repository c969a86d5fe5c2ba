package client

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"
)

// Lease errors. Test with errors.Is.
var (
	// ErrLeaseHeld: another holder's lease has not expired. Nothing was
	// changed.
	ErrLeaseHeld = errors.New("tutti: lease held by another")
	// ErrNotHolder: the grant is no longer the lease's record (it expired,
	// was taken over, released, or re-acquired). Nothing was changed.
	ErrNotHolder = errors.New("tutti: not the lease holder")
)

// Lease record layout, 24 bytes at Addr on Memnode, little-endian uint64s:
//
//	+0   holder  ID of the holder; 0 when free
//	+8   expiry  Unix nanoseconds, by the acquirer's clock; 0 when free
//	+16  epoch   fencing token: +1 at every acquisition, never reset
//
// Unwritten memory is the free record of epoch 0, so a lease needs no
// creation step.
const leaseRecordSize = 24

// LeaseConfig names a lease record and the contender using it.
type LeaseConfig struct {
	// Memnode and Addr locate the 24-byte record; Addr is a multiple of 8.
	Memnode, Addr uint64
	// ID identifies this contender; non-zero and distinct among
	// contenders. A contender that restarts with the same ID re-acquires
	// with a new epoch, fencing its previous incarnation.
	ID uint64
	// TTL is how long an acquisition or renewal lasts. Must be > 0.
	TTL time.Duration
	// MaxSkew bounds the difference between any two contenders' clocks
	// (including their drift over one TTL). A contender takes over an
	// expired lease only when its clock reads at least expiry + MaxSkew.
	// Must be >= 0.
	MaxSkew time.Duration
	// Now is the clock; time.Now if nil. Tests inject a fake one.
	Now func() time.Time
}

// LeaseRecord is the content of a lease record. A grant — what Acquire and
// Renew return — is the record its holder wrote.
type LeaseRecord struct {
	Holder uint64    // 0 when free
	Expiry time.Time // zero when free
	// Epoch is the fencing token: it increases with every acquisition.
	// Resources guarded by the lease should refuse requests carrying an
	// epoch lower than one they have seen.
	Epoch uint64
}

// HeldAt reports whether the record grants the lease at time t.
func (r LeaseRecord) HeldAt(t time.Time) bool {
	return r.Holder != 0 && t.Before(r.Expiry)
}

func (r LeaseRecord) encode() []byte {
	var ns uint64
	if r.Holder != 0 {
		ns = uint64(r.Expiry.UnixNano())
	}
	return words(r.Holder, ns, r.Epoch)
}

func decodeLease(b []byte) LeaseRecord {
	r := LeaseRecord{Holder: word(b, 0), Epoch: word(b, 2)}
	if ns := word(b, 1); ns != 0 {
		r.Expiry = time.Unix(0, int64(ns))
	}
	return r
}

// Lease is one contender's handle on a lease record: a time-bounded,
// exclusive grant with a fencing token, kept in a memnode and changed only
// by minitransactions that compare the whole record.
//
// # Time
//
// Expiry is an absolute time taken from the acquirer's clock (cfg.Now), and
// a contender compares it with its own clock. Exclusion therefore assumes
// that clocks differ by at most MaxSkew: a holder must act only while its
// own clock is before Expiry (LeaseRecord.HeldAt), and a contender takes
// over only once its clock reads Expiry+MaxSkew, by which time the holder's
// clock has passed Expiry. Pauses between the holder's check and its action
// (GC, scheduling, network) are outside any clock bound: guard resources with
// the Epoch fencing token, which stays correct even when clocks are wrong.
//
// A Lease is safe for concurrent use; it caches nothing.
type Lease struct {
	c   *Client
	cfg LeaseConfig
}

// NewLease returns a handle on the lease record at cfg.Memnode, cfg.Addr. It
// does no I/O.
func NewLease(c *Client, cfg LeaseConfig) (*Lease, error) {
	var errs []error
	if c == nil {
		errs = append(errs, fmt.Errorf("%w: lease: nil client", ErrInvalid))
	}
	if cfg.ID == 0 {
		errs = append(errs, fmt.Errorf("%w: lease: ID must be non-zero", ErrInvalid))
	}
	if cfg.Addr%8 != 0 {
		errs = append(errs, fmt.Errorf("%w: lease: Addr %#x is not a multiple of 8", ErrInvalid, cfg.Addr))
	}
	if cfg.TTL <= 0 {
		errs = append(errs, fmt.Errorf("%w: lease: TTL must be > 0, got %v", ErrInvalid, cfg.TTL))
	}
	if cfg.MaxSkew < 0 {
		errs = append(errs, fmt.Errorf("%w: lease: MaxSkew must be >= 0, got %v", ErrInvalid, cfg.MaxSkew))
	}
	if errs != nil {
		return nil, errors.Join(errs...)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Lease{c: c, cfg: cfg}, nil
}

// Holder reads the lease record. A record whose Expiry has passed is
// still returned as written; use HeldAt.
func (l *Lease) Holder(ctx context.Context) (LeaseRecord, error) {
	raw, err := l.read(ctx)
	if err != nil {
		return LeaseRecord{}, fmt.Errorf("lease: %w", err)
	}
	return decodeLease(raw), nil
}

func (l *Lease) read(ctx context.Context) ([]byte, error) {
	r, err := l.c.Exec(ctx, NewTx().Read(l.cfg.Memnode, l.cfg.Addr, leaseRecordSize))
	if err != nil {
		return nil, err
	}
	return r.Reads[0], nil
}

// settle reads the record in the step that settles an attempt whose
// outcome is unknown (attempt, its error; Client.Settle): it shows the
// attempt's write if and only if that ever lands.
func (l *Lease) settle(ctx context.Context, attempt error) ([]byte, error) {
	r, err := l.c.Settle(ctx, NewTx().Read(l.cfg.Memnode, l.cfg.Addr, leaseRecordSize), attempt)
	if err != nil {
		return nil, err
	}
	return r.Reads[0], nil
}

// Acquire takes the lease if it is free, expired (by Expiry+MaxSkew on this
// contender's clock), or recorded under this contender's own ID, and returns
// the grant, whose Epoch is one more than the record's. It fails with
// ErrLeaseHeld, naming the holder, while another holder's lease runs. It
// does not wait: call it again to contend.
//
// If the outcome of the minitransaction is unknown, Acquire reads the record
// back in a step that fences the attempt (on a context of its own if ctx
// has ended): it holds the lease if the record is the one it wrote, and
// otherwise the attempt never lands. So an error means the lease was not
// taken, unless it wraps ErrUnknownOutcome: the read back failed too, the
// fence may not have been applied, and the attempt may still take the
// lease (until its Expiry).
func (l *Lease) Acquire(ctx context.Context) (LeaseRecord, error) {
	for {
		if err := ctx.Err(); err != nil {
			return LeaseRecord{}, ctxErr("lease acquire", err)
		}
		raw, err := l.read(ctx)
		if err != nil {
			return LeaseRecord{}, fmt.Errorf("lease acquire: %w", err)
		}
		cur := decodeLease(raw)
		now := l.cfg.Now()
		if cur.Holder != 0 && cur.Holder != l.cfg.ID && now.Before(cur.Expiry.Add(l.cfg.MaxSkew)) {
			return LeaseRecord{}, fmt.Errorf("%w: holder %d, epoch %d, until %v", ErrLeaseHeld, cur.Holder, cur.Epoch, cur.Expiry)
		}
		grant := LeaseRecord{Holder: l.cfg.ID, Expiry: now.Add(l.cfg.TTL), Epoch: cur.Epoch + 1}
		res, err := l.c.Exec(ctx, NewTx().Compare(l.cfg.Memnode, l.cfg.Addr, raw).Write(l.cfg.Memnode, l.cfg.Addr, grant.encode()))
		if err != nil {
			if !isUnknown(err) {
				return LeaseRecord{}, fmt.Errorf("lease acquire: %w", err)
			}
			now, rerr := l.settle(ctx, err)
			if rerr != nil {
				return LeaseRecord{}, fmt.Errorf("lease acquire: %w; reading the record back failed too: %v", err, rerr)
			}
			if bytes.Equal(now, grant.encode()) {
				return grant, nil
			}
			continue
		}
		if res.Committed {
			return grant, nil
		}
		// Someone changed the record since it was read: look again.
	}
}

// Renew extends grant g to now+TTL, keeping its epoch, and returns the new
// grant. It fails with ErrNotHolder if g has expired on this contender's
// clock (acquire again instead, with a new epoch) or is no longer the
// record, and with ErrInvalid if g is not a grant of this contender.
func (l *Lease) Renew(ctx context.Context, g LeaseRecord) (LeaseRecord, error) {
	if g.Holder != l.cfg.ID || g.Epoch == 0 {
		return LeaseRecord{}, fmt.Errorf("%w: lease renew: %+v is not a grant of contender %d", ErrInvalid, g, l.cfg.ID)
	}
	for {
		if err := ctx.Err(); err != nil {
			return LeaseRecord{}, ctxErr("lease renew", err)
		}
		now := l.cfg.Now()
		if !g.HeldAt(now) {
			return LeaseRecord{}, fmt.Errorf("%w: lease renew: epoch %d expired at %v (now %v)", ErrNotHolder, g.Epoch, g.Expiry, now)
		}
		next := LeaseRecord{Holder: g.Holder, Expiry: now.Add(l.cfg.TTL), Epoch: g.Epoch}
		applied, err := l.swap(ctx, g, next.encode())
		if err != nil {
			return LeaseRecord{}, fmt.Errorf("lease renew: %w", err)
		}
		if applied {
			return next, nil
		}
	}
}

// Release frees the lease held under grant g: it writes zeros over holder
// and expiry and keeps the epoch, so the next acquisition's token is still
// larger. It fails with ErrNotHolder if g is no longer the record.
func (l *Lease) Release(ctx context.Context, g LeaseRecord) error {
	if g.Holder != l.cfg.ID || g.Epoch == 0 {
		return fmt.Errorf("%w: lease release: %+v is not a grant of contender %d", ErrInvalid, g, l.cfg.ID)
	}
	for {
		if err := ctx.Err(); err != nil {
			return ctxErr("lease release", err)
		}
		applied, err := l.swap(ctx, g, LeaseRecord{Epoch: g.Epoch}.encode())
		if err != nil {
			return fmt.Errorf("lease release: %w", err)
		}
		if applied {
			return nil
		}
	}
}

// swap replaces the record g with next. It fails with ErrNotHolder if the
// record is not g. applied false with no error means the outcome was
// unknown and the record is still g: try again.
func (l *Lease) swap(ctx context.Context, g LeaseRecord, next []byte) (applied bool, err error) {
	old := g.encode()
	res, err := l.c.Exec(ctx, NewTx().Compare(l.cfg.Memnode, l.cfg.Addr, old).Write(l.cfg.Memnode, l.cfg.Addr, next))
	if err == nil && res.Committed {
		return true, nil
	}
	if err != nil && !isUnknown(err) {
		return false, err
	}
	var raw []byte
	var rerr error
	if err != nil {
		raw, rerr = l.settle(ctx, err)
	} else {
		raw, rerr = l.read(ctx)
	}
	if rerr != nil {
		if err == nil {
			return false, fmt.Errorf("%w: the record is no longer epoch %d's grant", ErrNotHolder, g.Epoch)
		}
		return false, fmt.Errorf("%w; reading the record back failed too: %v", err, rerr)
	}
	if err != nil { // outcome unknown: did our write land?
		switch {
		case bytes.Equal(raw, next):
			return true, nil
		case bytes.Equal(raw, old):
			return false, nil
		}
	}
	cur := decodeLease(raw)
	return false, fmt.Errorf("%w: the record is holder %d, epoch %d, until %v, not the grant of epoch %d until %v",
		ErrNotHolder, cur.Holder, cur.Epoch, cur.Expiry, g.Epoch, g.Expiry)
}
