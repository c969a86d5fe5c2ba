package gcs

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/tutti-gcs/tutti/client"
)

// Node is this process's handle on groups. It is safe for concurrent use.
type Node struct {
	cfg      Config
	cl       *client.Client
	log      zerolog.Logger
	memnodes []uint64 // sorted
	allocs   map[uint64]*client.Allocator
	// itemMax is the cluster's limit on the bytes of one read or write
	// item (ClusterInfo.max_item_bytes; 1 MiB, the memnode default, if
	// the cluster announced none): larger ring accesses are split.
	itemMax uint64
	// linkRecs bounds the records of one link (maxLinkRecords, and half
	// the cluster's MaxItems: two relocations each).
	linkRecs int

	ctx    context.Context
	cancel context.CancelFunc
	// bg counts background work that outlives a Group (reclaimAfterLeave);
	// Close waits for it.
	bg sync.WaitGroup

	mu struct {
		sync.Mutex
		closed bool
		groups map[*Group]struct{}
		used   map[string]bool // member names this node used ("group/name")
	}
}

// Open checks cfg and returns a Node. It does no I/O beyond reading the
// client's cluster layout.
func Open(ctx context.Context, cfg Config) (*Node, error) {
	cfg.defaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	ms := append([]uint64(nil), cfg.Memnodes...)
	if len(ms) == 0 {
		info := cfg.Client.Cluster()
		if info == nil {
			return nil, fmt.Errorf("%w: the client knows no memnodes", ErrInvalid)
		}
		for _, m := range info.GetMemnodes() {
			ms = append(ms, m.GetId())
		}
	}
	if len(ms) == 0 {
		return nil, fmt.Errorf("%w: no memnodes", ErrInvalid)
	}
	sort.Slice(ms, func(i, j int) bool { return ms[i] < ms[j] })
	n := &Node{cfg: cfg, cl: cfg.Client, log: cfg.Logger.With().Str("gcs", cfg.ID).Logger(), memnodes: ms,
		allocs: map[uint64]*client.Allocator{}, itemMax: 1 << 20}
	if l := cfg.Client.Cluster().GetMaxItemBytes(); l > 0 {
		n.itemMax = uint64(l)
	}
	// A link relocates two words per record, and memnodes take at most
	// MaxItems relocations per minitransaction.
	n.linkRecs = maxLinkRecords
	if l := int(cfg.Client.Cluster().GetMaxItems()); l > 0 {
		n.linkRecs = max(1, min(n.linkRecs, l/2))
	}
	for _, m := range ms {
		a, err := client.NewAllocator(cfg.Client, client.AllocatorConfig{Memnode: m, Base: AllocBase, Limit: AllocLimit})
		if err != nil {
			return nil, err
		}
		n.allocs[m] = a
	}
	n.ctx, n.cancel = context.WithCancel(context.Background())
	n.mu.groups = map[*Group]struct{}{}
	n.mu.used = map[string]bool{}
	if cfg.Membership != nil {
		// A change of the process table may confirm a member dead: idle
		// housekeeping (see housekeep) must look at once.
		changes, unsubscribe := cfg.Membership.Subscribe()
		n.bg.Add(1)
		go func() {
			defer n.bg.Done()
			defer unsubscribe()
			for {
				select {
				case <-n.ctx.Done():
					return
				case _, ok := <-changes:
					if !ok {
						return
					}
					n.pokeHousekeeping()
				}
			}
		}()
	}
	return n, nil
}

// pokeHousekeeping ends the idle housekeeping waits of this node's members.
func (n *Node) pokeHousekeeping() {
	n.mu.Lock()
	defer n.mu.Unlock()
	for g := range n.mu.groups {
		g.pokeHousekeeping()
	}
}

// Close stops every group of this node without leaving: to the other
// members it looks like a crash (with Membership, they remove this process
// once the process table says so). Events channels are closed.
func (n *Node) Close() error {
	n.mu.Lock()
	if n.mu.closed {
		n.mu.Unlock()
		return nil
	}
	n.mu.closed = true
	gs := make([]*Group, 0, len(n.mu.groups))
	for g := range n.mu.groups {
		gs = append(gs, g)
	}
	n.mu.Unlock()
	n.cancel()
	for _, g := range gs {
		g.stop(ErrClosed)
	}
	n.bg.Wait()
	return nil
}

// groupRef locates one group's metadata and order log.
type groupRef struct {
	name                string
	home, meta          uint64
	logSize, maxMembers uint64
	// slot is the address of the group's index slot: readMeta checks it
	// still names meta, so a deleted group is not mistaken for the group
	// that took over its metadata region.
	slot uint64
}

func (r groupRef) logBase() uint64 { return r.meta + metaHeader + r.maxMembers*memberSize }

// logRoom is how many bytes of the order log, counted from head, records
// may fill: all of it for a view change that only removes members, all but
// the removal reserve (logSize/8) for multicasts and joins. A member that
// stops delivering (crashed, evicted, a joiner waiting for its state) pins
// head, and only a view change that removes it lets head move again. When
// multicasts could fill the whole log, that removal found no room for its
// record and waited, like them, for a trim that could not come: the group
// stalled for good (senders, joins, leaves, removals), which a member
// crashing under load while gossip was still detecting it was enough for.
func (r groupRef) logRoom(removal bool) uint64 {
	if removal {
		return r.logSize
	}
	return r.logSize - r.logSize/8
}
func (r groupRef) metaLen() uint32 { return uint32(metaHeader + r.maxMembers*memberSize) }
func (r groupRef) slotAddr(slot int) uint64 {
	return r.meta + metaHeader + uint64(slot)*memberSize
}

// ringItems splits [pos, pos+l) of a ring into read or write items within
// the cluster's item limit.
func (n *Node) ringItems(base, size, pos, l uint64) []ringItem {
	return chunkItems(ringSplit(base, size, pos, l), n.itemMax)
}

func (n *Node) exec(ctx context.Context, tx *client.Tx) (*client.Result, error) {
	return n.cl.Exec(ctx, tx)
}

// Sites of execAt: the minitransactions whose unknown outcomes tests
// inject (execFault).
const (
	siteDelete  = "delete"  // Delete's tombstone and free-list push
	siteClaim   = "claim"   // a new group's index claim in lookup
	siteLink    = "link"    // a sender's link into the order log
	sitePublish = "publish" // a state provider's publication in the joiner's slot
	siteView    = "view"    // a view change (join, leave, removal)
	siteFinal   = "final"   // a leaver's final position (publishFinal)
	siteBlob    = "blob"    // a receiver's read of a batch from its sender's queue
	siteQueue   = "queue"   // a sender's write of batches to its queue
	siteState   = "state"   // a joiner's reads of its slot and of the state
	// a sender's read of the metadata after the view changed
	siteSenderMeta = "sender-meta"
)

// execFault is a failpoint for tests: when set, execAt's minitransactions
// go through it with their site; it runs them with do (or not) and returns
// what the caller sees, e.g. ErrUnknownOutcome after a commit, with other
// processes' steps in between.
var execFault atomic.Pointer[func(site string, do func() (*client.Result, error)) (*client.Result, error)]

// execAt is exec at a named site (execFault).
func (n *Node) execAt(ctx context.Context, site string, tx *client.Tx) (*client.Result, error) {
	if f := execFault.Load(); f != nil {
		return (*f)(site, func() (*client.Result, error) { return n.exec(ctx, tx) })
	}
	return n.exec(ctx, tx)
}

// settle runs tx, whose items are on one memnode, as the step that
// settles the one-phase attempts whose errors are attempts (those that
// name none are skipped), through client.Client.Settle: a logged Exec (one
// Raft entry, even when tx only reads), so ordered after an attempt the
// memnode's leader has, that fences the attempts (client.Tx.Fence), so an
// attempt still on its way is refused when it arrives. Its reads then show
// an attempt's effect if and only if it ever applies. An attempt that ran
// on another memnode than tx's is refused with client.ErrInvalid before
// anything is sent: a fence there would settle nothing, and the reads
// would call the attempt not applied while it can still land. Unlike
// Settle it does not start once ctx has ended: the callers tell a closed
// node or group by their ctx.
func (n *Node) settle(ctx context.Context, tx *client.Tx, attempts ...error) (*client.Result, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return n.cl.Settle(ctx, tx, attempts...)
}

// settleRead reads like read in a settling step (settle).
func (n *Node) settleRead(ctx context.Context, mn, addr uint64, l uint32, attempts ...error) ([]byte, error) {
	res, err := n.settle(ctx, client.NewTx().Read(mn, addr, l), attempts...)
	if err != nil {
		return nil, err
	}
	return res.Reads[0], nil
}

func (n *Node) read(ctx context.Context, mn, addr uint64, l uint32) ([]byte, error) {
	res, err := n.cl.Exec(ctx, client.NewTx().Read(mn, addr, l))
	if err != nil {
		return nil, err
	}
	return res.Reads[0], nil
}

// readMeta reads the header and member slots, and the index slot that
// names them, in one minitransaction: ErrNoGroup if the group was deleted.
func (n *Node) readMeta(ctx context.Context, ref groupRef) (metaState, error) {
	return n.readMetaBy(ref, func(tx *client.Tx) (*client.Result, error) { return n.cl.Exec(ctx, tx) })
}

// settleMeta is readMeta in a step that settles attempts (settle).
func (n *Node) settleMeta(ctx context.Context, ref groupRef, attempts ...error) (metaState, error) {
	return n.readMetaBy(ref, func(tx *client.Tx) (*client.Result, error) { return n.settle(ctx, tx, attempts...) })
}

// readMetaBy is readMeta with the minitransaction run by run.
func (n *Node) readMetaBy(ref groupRef, run func(*client.Tx) (*client.Result, error)) (metaState, error) {
	res, err := run(client.NewTx().Read(ref.home, ref.meta, ref.metaLen()).Read(ref.home, ref.slot, IndexSlotSize))
	if err != nil {
		return metaState{}, err
	}
	if !bytes.Equal(res.Reads[1], indexEntry(ref.meta, ref.name)) {
		return metaState{}, fmt.Errorf("%w: %s was deleted", ErrNoGroup, ref.name)
	}
	return decodeMeta(res.Reads[0])
}

func (n *Node) readHeader(ctx context.Context, ref groupRef) (header, error) {
	b, err := n.read(ctx, ref.home, ref.meta, metaHeader)
	if err != nil {
		return header{}, err
	}
	return decodeHeader(b)
}

// lookup finds group in its home memnode's index, creating it when absent
// if create is set (else ErrNoGroup). The index is an open-addressing hash
// table: linear probing from hash(name) mod IndexSlots up to the first
// free slot; a deleted group's slot is a tombstone (indexDeleted) that
// probing passes. A new name takes the chain's first tombstone, else its
// free slot, by a minitransaction that compares the whole chain as read
// (so two processes cannot place one name in two slots) and writes the
// slot.
func (n *Node) lookup(ctx context.Context, name string, create bool) (groupRef, error) {
	home := homeOf(name, n.memnodes)
	start := hashName(name) % IndexSlots
	var created *client.Region // a metadata region we hold, not yet in the index
	defer func() {
		if created != nil {
			n.releaseMeta(context.WithoutCancel(ctx), *created)
		}
	}()
	for attempt := 0; ; attempt++ {
		if attempt == 100 {
			return groupRef{}, fmt.Errorf("gcs: %s: index of memnode %d keeps changing", name, home)
		}
		c, err := n.probe(ctx, home, start, name)
		if err != nil {
			return groupRef{}, err
		}
		if c.found >= 0 {
			ref, err := n.openRef(ctx, name, home, c.meta, c.found)
			if errors.Is(err, ErrNoGroup) {
				continue // deleted since the probe: probe again
			}
			return ref, err
		}
		if !create {
			return groupRef{}, fmt.Errorf("%w: %s", ErrNoGroup, name)
		}
		target := c.tomb
		if target < 0 {
			target = c.free
		}
		if target < 0 {
			return groupRef{}, fmt.Errorf("%w: memnode %d", ErrIndexFull, home)
		}
		if created == nil {
			r, err := n.newMeta(ctx, home)
			if err != nil {
				return groupRef{}, err
			}
			created = &r
		}
		entry := indexEntry(created.Addr, name)
		addr := IndexBase + uint64(target)*IndexSlotSize
		// The index is a ring of slots: the chain may wrap.
		tx, off := client.NewTx(), uint64(0)
		for _, it := range n.ringItems(IndexBase, IndexSlots*IndexSlotSize, c.start*IndexSlotSize, uint64(len(c.raw))) {
			tx.Compare(home, it.addr, c.raw[off:off+it.n])
			off += it.n
		}
		tx.Write(home, addr, entry)
		res, err := n.execAt(ctx, siteClaim, tx)
		if err != nil && errors.Is(err, client.ErrUnknownOutcome) {
			b, rerr := n.settleRead(ctx, home, addr, IndexSlotSize, err)
			if rerr != nil || !bytes.Equal(b, entry) {
				// The claim may have committed (and the group been
				// deleted since, its region listed or even taken by
				// another group): the region must never be released.
				// At worst it is lost.
				created = nil
				if rerr != nil {
					return groupRef{}, errors.Join(err, rerr)
				}
			}
			res = &client.Result{Committed: rerr == nil && bytes.Equal(b, entry)}
			err = nil
		}
		if err != nil {
			return groupRef{}, err
		}
		if res.Committed {
			meta := created.Addr
			created = nil
			ref, err := n.openRef(ctx, name, home, meta, target)
			if errors.Is(err, ErrNoGroup) {
				continue // deleted at once by another process
			}
			return ref, err
		}
		// The chain changed (another name or a deletion): probe again.
	}
}

// indexEntry is the index slot naming group name's metadata at meta.
func indexEntry(meta uint64, name string) []byte {
	b := make([]byte, IndexSlotSize)
	putU64s(b, meta, uint64(len(name)))
	copy(b[16:], name)
	return b
}

// chain is the probe sequence of a name as one read found it: raw holds
// the slots from start on (wrapping at IndexSlots), found is the name's
// slot (meta its metadata) or -1; else tomb is the first tombstone and free
// the first free slot, where the chain ends (-1: none).
type chain struct {
	start             uint64
	raw               []byte
	found, tomb, free int
	meta              uint64
}

// probe reads name's chain from slot start, indexProbe slots per read.
func (n *Node) probe(ctx context.Context, home, start uint64, name string) (chain, error) {
	c := chain{start: start, found: -1, tomb: -1, free: -1}
	for probed := uint64(0); probed < IndexSlots; {
		first := (start + probed) % IndexSlots
		cnt := min(uint64(indexProbe), IndexSlots-first, IndexSlots-probed)
		raw, err := n.read(ctx, home, IndexBase+first*IndexSlotSize, uint32(cnt*IndexSlotSize))
		if err != nil {
			return chain{}, err
		}
		for i := uint64(0); i < cnt; i++ {
			s := raw[i*IndexSlotSize : (i+1)*IndexSlotSize]
			c.raw = append(c.raw, s...)
			slot := int(first + i)
			switch meta, nl := u64(s, 0), u64(s, 8); {
			case meta == 0:
				c.free = slot
				return c, nil
			case meta == indexDeleted:
				if c.tomb < 0 {
					c.tomb = slot
				}
			case nl == uint64(len(name)) && string(s[16:16+nl]) == name:
				c.found, c.meta = slot, meta
				return c, nil
			}
		}
		probed += cnt
	}
	return c, nil // every slot probed: no free slot
}

// newMeta returns a metadata region on home for a new group: a deleted
// group's from the free list (FreeMetaAddr), its counters going on, if the
// first listed is of this Node's LogCapacity and MaxMembers, or a newly
// allocated and initialised one.
func (n *Node) newMeta(ctx context.Context, home uint64) (client.Region, error) {
	for attempt := 0; attempt < 20; attempt++ {
		r, ok, err := n.popMeta(ctx, home)
		if err != nil || !ok {
			if err != nil {
				n.log.Debug().Err(err).Uint64("memnode", home).Msg("reusing deleted group metadata")
			}
			break
		}
		if r.Len != 0 {
			return r, nil
		}
	}
	return n.createMeta(ctx, home)
}

// popMeta takes the first region of home's free list: ok is false when the
// list is empty; a zero Region with ok means the list changed meanwhile.
func (n *Node) popMeta(ctx context.Context, home uint64) (r client.Region, ok bool, err error) {
	b, err := n.read(ctx, home, FreeMetaAddr, 8)
	if err != nil {
		return client.Region{}, false, err
	}
	meta := u64(b, 0)
	if meta == 0 {
		return client.Region{}, false, nil
	}
	hb, err := n.read(ctx, home, meta, offFreeNext+8)
	if err != nil {
		return client.Region{}, false, err
	}
	if string(hb[:8]) != metaDeleted {
		return client.Region{}, true, nil // popped and reused meanwhile
	}
	h := header{logSize: u64(hb, 48), maxMembers: u64(hb, 56)}
	if h.logSize != n.cfg.LogCapacity || h.maxMembers != uint64(n.cfg.MaxMembers) {
		// Made for another configuration: a group of ours gets the log
		// and member slots we are configured for.
		return client.Region{}, false, nil
	}
	next := u64(hb, offFreeNext)
	res, err := n.exec(ctx, client.NewTx().
		Compare(home, FreeMetaAddr, le.AppendUint64(nil, meta)).
		Compare(home, meta, []byte(metaDeleted)).
		Compare(home, meta+offFreeNext, le.AppendUint64(nil, next)).
		Write(home, FreeMetaAddr, le.AppendUint64(nil, next)).
		Write(home, meta+offFreeNext, make([]byte, 8)).
		Write(home, meta, []byte(metaMagic)))
	if err != nil {
		// With an unknown outcome the region may be ours and is then
		// lost to the list; a new one is allocated instead.
		return client.Region{}, false, err
	}
	if !res.Committed {
		return client.Region{}, true, nil
	}
	return client.Region{Memnode: home, Addr: meta, Len: metaHeader + h.maxMembers*memberSize + h.logSize}, true, nil
}

// releaseMeta puts a metadata region that no index slot names (newMeta's,
// when the claim failed) on home's free list; if that fails it is lost.
func (n *Node) releaseMeta(ctx context.Context, r client.Region) {
	ctx, cancel := context.WithTimeout(ctx, releaseTimeout)
	defer cancel()
	err := n.retry(ctx, func() error {
		hb, err := n.read(ctx, r.Memnode, r.Addr, metaHeader)
		if err != nil {
			return err
		}
		h, err := decodeHeader(hb)
		if err != nil {
			return err
		}
		b, err := n.read(ctx, r.Memnode, FreeMetaAddr, 8)
		if err != nil {
			return err
		}
		head := u64(b, 0)
		res, err := n.exec(ctx, client.NewTx().
			Compare(r.Memnode, FreeMetaAddr, b).
			Compare(r.Memnode, r.Addr, hb).
			Write(r.Memnode, r.Addr, deletedHeader(h)).
			Write(r.Memnode, r.Addr+offFreeNext, le.AppendUint64(nil, head)).
			Write(r.Memnode, FreeMetaAddr, le.AppendUint64(nil, r.Addr)))
		if err != nil {
			return err
		}
		if !res.Committed {
			return errRetry
		}
		return nil
	})
	if err != nil {
		n.log.Debug().Err(err).Uint64("memnode", r.Memnode).Uint64("addr", r.Addr).Msg("returning unused group metadata to the free list")
	}
}

// releaseTimeout bounds releaseMeta, which outlives its caller's context.
const releaseTimeout = 2 * time.Second

// errRetry: a compare failed because another process changed what was
// read; read again.
var errRetry = errors.New("gcs: changed meanwhile")

// deletedHeader is h as a listed (deleted) region keeps it: magic
// metaDeleted, the view one higher (a view change, join or delete of the
// old group in flight fails its compare) and head at the tail.
func deletedHeader(h header) []byte {
	h.view++
	h.head = h.tail
	b := h.encode()
	copy(b, metaDeleted)
	return b
}

// createMeta allocates and initialises a metadata region on home.
func (n *Node) createMeta(ctx context.Context, home uint64) (client.Region, error) {
	h := header{logSize: n.cfg.LogCapacity, maxMembers: uint64(n.cfg.MaxMembers)}
	size := uint64(metaHeader) + h.maxMembers*memberSize + h.logSize
	r, err := n.allocs[home].Alloc(ctx, size)
	if err != nil {
		return client.Region{}, err
	}
	init := make([]byte, metaHeader+h.maxMembers*memberSize)
	copy(init, h.encode())
	// Nothing names r until the index claim: free it if it is not used.
	fail := func(err error) (client.Region, error) {
		if ferr := n.allocs[home].Free(context.WithoutCancel(ctx), r); ferr != nil {
			n.log.Debug().Err(ferr).Msg("freeing group metadata that was not initialised")
		}
		return client.Region{}, err
	}
	_, err = n.exec(ctx, client.NewTx().Write(home, r.Addr, init))
	if err == nil {
		return r, nil
	}
	if !errors.Is(err, client.ErrUnknownOutcome) {
		return fail(err)
	}
	// The attempt may still be on its way to the leader: write once more,
	// fencing it, so that it never lands later over a region that has
	// become a live group's, or been freed and handed to someone else. On
	// a context of its own if ctx ended (often why the outcome is
	// unknown; client.Client.Settle). If that fails too, the region is
	// kept (lost), not freed.
	if _, werr := n.cl.Settle(ctx, client.NewTx().Write(home, r.Addr, init), err); werr != nil {
		return client.Region{}, errors.Join(err, werr)
	}
	if cerr := ctx.Err(); cerr != nil {
		return fail(errors.Join(err, cerr))
	}
	return r, nil
}

func (n *Node) openRef(ctx context.Context, name string, home, meta uint64, slot int) (groupRef, error) {
	ref := groupRef{name: name, home: home, meta: meta, slot: IndexBase + uint64(slot)*IndexSlotSize}
	h, err := n.readHeader(ctx, ref)
	if err != nil {
		return groupRef{}, err
	}
	ref.logSize, ref.maxMembers = h.logSize, h.maxMembers
	return ref, nil
}

// Join makes this process a member of group (created on first use) and
// returns once the view admitting it is installed: after state transfer
// (Restore) when a provider exists. The first event on Events is that
// *View. Joining the same group twice from one Node gives two members.
func (n *Node) Join(ctx context.Context, group string, opts JoinOptions) (*Group, error) {
	if group == "" || len(group) > MaxGroupName {
		return nil, fmt.Errorf("%w: group name must be 1..%d bytes", ErrInvalid, MaxGroupName)
	}
	if n.isClosed() {
		return nil, ErrClosed
	}
	ref, err := n.lookup(ctx, group, true)
	if err != nil {
		return nil, fmt.Errorf("gcs: join %s: %w", group, err)
	}
	var lastErr error
	for attempt := 0; attempt < 8; attempt++ {
		// Each attempt gets a queue of its own. An attempt that placed its
		// member slot and then left (abandon) hands the queue to that slot:
		// the oldest member reclaims it with the slot, zeroing its fence
		// and freeing it. Reusing it for the next attempt (as Join did)
		// let that reclaim zero the live member's fence (its queue writes
		// then failed as if evicted, while it was still in the view) and
		// free a queue still in use.
		qmn := n.memnodes[hashName(n.cfg.ID+"/"+group+fmt.Sprint(n.cfg.Now().UnixNano(), attempt))%uint64(len(n.memnodes))]
		q, err := n.allocs[qmn].Alloc(ctx, n.cfg.QueueCapacity+8)
		if err != nil {
			return nil, fmt.Errorf("gcs: join %s: queue: %w", group, err)
		}
		g, retry, placed, err := n.joinOnce(ctx, ref, q, opts)
		if err == nil {
			return g, nil
		}
		lastErr = err
		if !placed {
			if ferr := n.allocs[qmn].Free(context.WithoutCancel(ctx), q); ferr != nil {
				n.log.Debug().Err(ferr).Msg("freeing queue after failed join")
			}
		}
		if errors.Is(err, ErrNoGroup) && ctx.Err() == nil {
			// Deleted while we joined: join the group of that name
			// now (created anew if nobody did).
			if ref, err = n.lookup(ctx, group, true); err != nil {
				return nil, fmt.Errorf("gcs: join %s: %w", group, err)
			}
			continue
		}
		if !retry {
			break
		}
	}
	return nil, fmt.Errorf("gcs: join %s: %w", group, lastErr)
}

func (n *Node) isClosed() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.mu.closed
}

// joinOnce runs one join view change and the state transfer. retry reports
// that the provider vanished before transferring and the join should be
// made again (the membership just made was left). placed reports that the
// view change committed: a slot then references q, and q is freed with
// the slot, not by the caller.
func (n *Node) joinOnce(ctx context.Context, ref groupRef, q client.Region, opts JoinOptions) (g *Group, retry, placed bool, err error) {
	var self member
	var out viewOutcome
	err = n.viewChange(ctx, ref, func(ms metaState) (*change, error) {
		slot := -1
		for _, m := range ms.members {
			if m.tag == 0 {
				slot = m.slot
				break
			}
		}
		if slot < 0 {
			return nil, ErrGroupFull
		}
		tag := ms.h.nextTag + 1
		self = member{slot: slot, tag: tag, joinedView: ms.h.view + 1, qMemnode: q.Memnode, qAddr: q.Addr, qLen: q.Len,
			dLog: ms.h.tail, dMsg: ms.h.msgs}
		inc := tag
		if n.cfg.Membership != nil {
			inc = n.cfg.Membership.Incarnation()
			self.inc = inc
		}
		self.name = fmt.Sprintf("%s#%d", n.cfg.ID, inc)
		n.mu.Lock()
		if n.mu.used[ref.name+"/"+self.name] {
			self.name = fmt.Sprintf("%s#%d.%d", n.cfg.ID, inc, tag)
		}
		n.mu.Unlock()
		ch := &change{add: &self, reason: "join"}
		dead := n.confirmedDead(ms.active())
		ch.remove = dead
		if opts.Restore != nil {
			for _, m := range ms.active() {
				if !containsTag(dead, m.tag) {
					ch.provider = m.tag
					break
				}
			}
		}
		return ch, nil
	}, &out)
	if err != nil {
		if errors.Is(err, errJoinLost) {
			// Join again, with a queue of its own (this one may be
			// referenced by a slot that was placed and removed since:
			// leaked, never freed by us).
			return nil, true, true, err
		}
		if !errors.Is(err, client.ErrUnknownOutcome) {
			return nil, false, false, err
		}
		// An unsettled outcome may have placed the slot. Left there, it
		// would be a member nobody runs: its delivered position pins the
		// log until senders block, and it may be named state provider.
		// Leave it if it is there (it then holds the queue, which its
		// reclaim frees); else the queue leaks rather than be freed
		// while a slot may reference it. The name is not used again.
		n.mu.Lock()
		n.mu.used[ref.name+"/"+self.name] = true
		n.mu.Unlock()
		n.abandon(ref, self)
		return nil, false, true, err
	}
	n.mu.Lock()
	n.mu.used[ref.name+"/"+self.name] = true
	n.mu.Unlock()
	// Fence the queue (queueFence) while our slot still holds us as a
	// member: blob writes compare the fence. A slot already retired (we
	// were removed, perhaps being reclaimed: its marker in the fence word)
	// fails the compare, so a late retry never overwrites the marker (the
	// queue would then never be freed).
	tagB := le.AppendUint64(nil, self.tag)
	fenced := false
	err = n.retry(ctx, func() error {
		res, err := n.exec(ctx, client.NewTx().
			Compare(ref.home, ref.slotAddr(self.slot), tagB).
			Compare(ref.home, ref.slotAddr(self.slot)+offRetired, make([]byte, 8)).
			Write(q.Memnode, q.Addr, queueFence(ref, self.tag)))
		fenced = err == nil && res.Committed
		return err
	})
	if err == nil && !fenced {
		err = fmt.Errorf("%w: removed before its queue was fenced", ErrEvicted)
	}
	if err != nil {
		n.abandon(ref, self)
		return nil, false, true, err
	}
	self.dLog, self.dMsg = out.pos, out.msgs
	g = newGroup(n, ref, self, opts, out.pos)
	if out.provider != 0 {
		retry, err := g.receiveState(ctx, out.provider)
		if err != nil {
			n.abandon(ref, self)
			return nil, retry, true, err
		}
	}
	if !n.register(g) {
		n.abandon(ref, self)
		return nil, false, true, ErrClosed
	}
	g.start()
	n.wakeLocal(ref.name)
	return g, false, true, nil
}

// abandon leaves a membership that never became a Group. The slot must be
// ours: tag, name and queue (a join whose outcome is unknown may not have
// placed it, and another joiner may have taken the same tag). If it fails
// within 10 s it goes on in the background (every few seconds, for up to
// abandonFor, or until the Node closes): a slot left behind is a member
// nobody runs, which pins the log and may be named state provider. If
// leaving empties the view, the last member's work (gc.go, The last member
// out) is ours too.
func (n *Node) abandon(ref groupRef, self member) {
	emptied := false
	leave := func(ctx context.Context) error {
		err := n.viewChange(ctx, ref, func(ms metaState) (*change, error) {
			if m, ok := ms.byTag(self.tag); ok && m.active() && m.name == self.name && m.holds(self) {
				emptied = len(ms.active()) == 1
				return &change{remove: []member{m}, reason: reasonLeft}, nil
			}
			emptied = false
			return nil, nil
		}, nil)
		if errors.Is(err, ErrNoGroup) {
			// Deleted: Delete takes a group with no slot left, so ours
			// was never placed (or is reclaimed). Nothing to leave; no
			// retry brings the group back.
			emptied = false
			return nil
		}
		return err
	}
	done := func(ctx context.Context) {
		if emptied {
			g := newGroup(n, ref, self, JoinOptions{}, 0)
			defer g.cancel()
			g.reclaimAfterLeave(ctx)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	err := leave(ctx)
	cancel()
	if err == nil {
		done(n.ctx)
		return
	}
	started := n.background(func() {
		ctx, cancel := context.WithTimeout(n.ctx, abandonFor)
		defer cancel()
		for {
			if err := sleepCtx(ctx, 2*time.Second); err != nil {
				n.log.Error().Str("member", self.name).Msg("gave up leaving after a failed join: the slot stays until removed (Group.Remove, or Membership once this process is gone)")
				return
			}
			rctx, rcancel := context.WithTimeout(ctx, 10*time.Second)
			err := leave(rctx)
			rcancel()
			if err == nil {
				done(ctx)
				return
			}
		}
	})
	if started {
		n.log.Warn().Err(err).Str("member", self.name).Msg("leaving after a failed join: retrying in the background")
	} else {
		n.log.Warn().Err(err).Str("member", self.name).Msg("leaving after a failed join failed; the node is closed")
	}
}

// background runs f on a goroutine that Close waits for; not once the Node
// is closed (it reports whether f was started).
func (n *Node) background(f func()) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.mu.closed {
		return false
	}
	n.bg.Add(1)
	go func() {
		defer n.bg.Done()
		f()
	}()
	return true
}

// abandonFor bounds abandon's background retries.
const abandonFor = 5 * time.Minute

func (n *Node) register(g *Group) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.mu.closed {
		return false
	}
	n.mu.groups[g] = struct{}{}
	return true
}

func (n *Node) unregister(g *Group) {
	n.mu.Lock()
	defer n.mu.Unlock()
	delete(n.mu.groups, g)
}

// wakeLocal wakes the delivery loops of this node's members of group: a
// local multicast or view change is visible at once, without waiting for
// the memnode's watch notification (which tells the other processes).
func (n *Node) wakeLocal(group string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for g := range n.mu.groups {
		if g.ref.name == group {
			g.poke()
		}
	}
}

// retry runs f until it succeeds, with backoff, on transient client
// errors: at most 21 times (about three seconds of waiting), and not past
// ctx. Steps that nothing can replace persist instead.
func (n *Node) retry(ctx context.Context, f func() error) error {
	return n.retryUpTo(ctx, 20, "", f)
}

// persist runs f until it succeeds, ctx ends, or it fails for a reason
// that waiting will not change (client.ErrInvalid, client.ErrClosed, and
// the group deleted or its metadata corrupt: ErrNoGroup, ErrCorrupt): for
// steps that nothing can replace, such as delivery's reads of what it
// must deliver next. It backs off like retry and warns every 10 s that
// what is stuck.
func (n *Node) persist(ctx context.Context, what string, f func() error) error {
	return n.retryUpTo(ctx, -1, what, f)
}

// retryUpTo is retry with at most limit retries (none if negative), and
// persist's warnings when what is set.
func (n *Node) retryUpTo(ctx context.Context, limit int, what string, f func() error) error {
	d := time.Millisecond
	start, warned := time.Now(), time.Now()
	for i := 0; ; i++ {
		err := f()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil || errors.Is(err, client.ErrClosed) || errors.Is(err, client.ErrInvalid) || limit >= 0 && i >= limit {
			return err
		}
		if limit < 0 && (errors.Is(err, ErrNoGroup) || errors.Is(err, ErrCorrupt)) {
			return err // persist: no wait brings the group back
		}
		switch {
		case what == "":
			n.log.Debug().Err(err).Msg("retrying")
		case time.Since(warned) >= 10*time.Second:
			warned = time.Now()
			n.log.Warn().Err(err).Dur("for", time.Since(start)).Msgf("%s: still failing; retrying", what)
		default:
			n.log.Debug().Err(err).Msgf("%s: retrying", what)
		}
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
		d = min(2*d, 200*time.Millisecond)
	}
}

func containsTag(ms []member, tag uint64) bool {
	for _, m := range ms {
		if m.tag == tag {
			return true
		}
	}
	return false
}
