package gcs

import (
	"context"
	"errors"
	"fmt"
	"sort"

	"github.com/tutti-gcs/tutti/client"
)

// GroupInfo is a group's metadata as one read of its home memnode found it
// (Node.Describe): the view, the order log's bounds and every member slot in
// use. It is what operators need to see why a group's log is not trimmed
// (a member that does not deliver) or whether a group's memory was
// reclaimed (no Retired slots).
type GroupInfo struct {
	Name string
	// Home is the memnode that holds the metadata and the order log.
	Home uint64
	// View is the current view id (0: never joined).
	View uint64
	// Msgs is the number of messages ordered so far (the Message.Pos of
	// the last one).
	Msgs uint64
	// Head and Tail bound the order log in bytes: [Head, Tail) is kept,
	// positions below Head were reclaimed.
	Head, Tail uint64
	// LogCapacity is the size of the order log ring in bytes.
	LogCapacity uint64
	// Members is the current view, oldest first.
	Members []MemberInfo
	// Retired are members removed from the view whose slot and queue are
	// not reclaimed yet: reclaimed once the log is trimmed past their
	// removal (see the package doc, Garbage collection).
	Retired []MemberInfo
}

// MemberInfo is one member slot of a group.
type MemberInfo struct {
	Name string
	// JoinedView is the view that admitted the member.
	JoinedView uint64
	// Delivered is the Message.Pos the member last published as delivered,
	// DeliveredLog the order-log position (published every GCInterval).
	Delivered, DeliveredLog uint64
	// Queue is the member's queue ring.
	Queue client.Region
	// RemovedAt is the order-log position of the view record that removed
	// the member (Retired only), Left whether its own Leave did.
	RemovedAt uint64
	Left      bool
}

// Describe reads group's metadata. It changes nothing and does not create
// the group: ErrNoGroup if it does not exist.
func (n *Node) Describe(ctx context.Context, group string) (GroupInfo, error) {
	if group == "" || len(group) > MaxGroupName {
		return GroupInfo{}, fmt.Errorf("%w: group name must be 1..%d bytes", ErrInvalid, MaxGroupName)
	}
	ref, err := n.lookup(ctx, group, false)
	if err != nil {
		return GroupInfo{}, fmt.Errorf("gcs: describe %s: %w", group, err)
	}
	return n.describeRef(ctx, ref)
}

// describeRef reads the metadata ref locates.
func (n *Node) describeRef(ctx context.Context, ref groupRef) (GroupInfo, error) {
	ms, err := n.readMeta(ctx, ref)
	if err != nil {
		return GroupInfo{}, fmt.Errorf("gcs: describe %s: %w", ref.name, err)
	}
	gi := GroupInfo{Name: ref.name, Home: ref.home, View: ms.h.view, Msgs: ms.h.msgs, Head: ms.h.head, Tail: ms.h.tail,
		LogCapacity: ms.h.logSize}
	for _, m := range ms.active() {
		gi.Members = append(gi.Members, memberInfo(m))
	}
	for _, m := range ms.members {
		if m.tag != 0 && !m.active() {
			gi.Retired = append(gi.Retired, memberInfo(m))
		}
	}
	sort.Slice(gi.Retired, func(i, j int) bool { return gi.Retired[i].RemovedAt < gi.Retired[j].RemovedAt })
	return gi, nil
}

func memberInfo(m member) MemberInfo {
	mi := MemberInfo{Name: m.name, JoinedView: m.joinedView, Delivered: m.dMsg, DeliveredLog: m.dLog,
		Queue: client.Region{Memnode: m.qMemnode, Addr: m.qAddr, Len: m.qLen}}
	if m.retiredAt != 0 {
		mi.RemovedAt, mi.Left = retiredPos(m), m.retiredAt&retiredLeft != 0
	}
	return mi
}

// Groups describes every group in the index of every memnode
// (Config.Memnodes), sorted by name: each memnode's index is read once, then
// each group's metadata as Describe reads it. It changes nothing.
func (n *Node) Groups(ctx context.Context) ([]GroupInfo, error) {
	var out []GroupInfo
	const chunk = 256 // slots per read: 32 KiB, within any item limit
	for _, mn := range n.memnodes {
		for first := uint64(0); first < IndexSlots; first += chunk {
			cnt := min(chunk, IndexSlots-first)
			raw, err := n.read(ctx, mn, IndexBase+first*IndexSlotSize, uint32(cnt*IndexSlotSize))
			if err != nil {
				return nil, fmt.Errorf("gcs: list groups: memnode %d: %w", mn, err)
			}
			for i := uint64(0); i < cnt; i++ {
				s := raw[i*IndexSlotSize : (i+1)*IndexSlotSize]
				if meta := u64(s, 0); meta == 0 || meta == indexDeleted {
					continue
				}
				nl := u64(s, 8)
				if nl == 0 || nl > MaxGroupName {
					return nil, fmt.Errorf("%w: memnode %d index slot %d: name length %d", ErrCorrupt, mn, first+i, nl)
				}
				ref, err := n.openRef(ctx, string(s[16:16+nl]), mn, u64(s, 0), int(first+i))
				if err == nil {
					var gi GroupInfo
					if gi, err = n.describeRef(ctx, ref); err == nil {
						out = append(out, gi)
						continue
					}
				}
				if errors.Is(err, ErrNoGroup) {
					continue // deleted since the index was read
				}
				return nil, fmt.Errorf("gcs: list groups: %w", err)
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// Delete deletes group, which must be empty: no member and no removed
// member whose slot and queue are not reclaimed yet (ErrNotEmpty; a Leave
// that empties the group reclaims them, possibly finishing in the
// background, and a crashed last member stays until a new member removes
// it). ErrNoGroup if it does not exist.
//
// The name's index slot becomes free for any name and the metadata region
// (with its order log) goes to the home memnode's free list, taken by the
// next group created there: a process that makes up group names can create
// and delete groups for ever (without Delete, each memnode's index holds
// IndexSlots names). A Join racing the Delete either made the group
// non-empty first (Delete then fails) or joins the group of that name
// created after it. A group created again under the same name starts a new
// history: its view ids and Message.Pos go on from the numbers the region
// had reached, never from 0.
func (n *Node) Delete(ctx context.Context, group string) error {
	if group == "" || len(group) > MaxGroupName {
		return fmt.Errorf("%w: group name must be 1..%d bytes", ErrInvalid, MaxGroupName)
	}
	for attempt := 0; ; attempt++ {
		if attempt == 50 {
			return fmt.Errorf("gcs: delete %s: the group keeps changing", group)
		}
		ref, err := n.lookup(ctx, group, false)
		if err != nil {
			return fmt.Errorf("gcs: delete %s: %w", group, err)
		}
		ms, err := n.readMeta(ctx, ref)
		if errors.Is(err, ErrNoGroup) {
			continue
		}
		if err != nil {
			return fmt.Errorf("gcs: delete %s: %w", group, err)
		}
		var in, retired []string
		for _, m := range ms.members {
			switch {
			case m.tag == 0:
			case m.active():
				in = append(in, m.name)
			default:
				retired = append(retired, m.name)
			}
		}
		if len(in) > 0 || len(retired) > 0 {
			return fmt.Errorf("gcs: delete %s: %w: members %v, removed members not yet reclaimed %v", group, ErrNotEmpty, in, retired)
		}
		fb, err := n.read(ctx, ref.home, FreeMetaAddr, 8)
		if err != nil {
			return fmt.Errorf("gcs: delete %s: %w", group, err)
		}
		// Every member slot is free and stays free unless a view change
		// commits, which the view compare rules out.
		res, err := n.execAt(ctx, siteDelete, client.NewTx().
			Compare(ref.home, ref.slot, indexEntry(ref.meta, ref.name)).
			Compare(ref.home, ref.meta, ms.h.encode()).
			Compare(ref.home, FreeMetaAddr, fb).
			Write(ref.home, ref.slot, tombstone()).
			Write(ref.home, ref.meta, deletedHeader(ms.h)).
			Write(ref.home, ref.meta+offFreeNext, fb).
			Write(ref.home, FreeMetaAddr, le.AppendUint64(nil, ref.meta)))
		switch {
		case err != nil && errors.Is(err, client.ErrUnknownOutcome):
			// Settle it on this group, not on one created under the
			// name since: if its index slot no longer names it, it is
			// deleted (by us or a concurrent Delete).
			gone := false
			attempt := err
			rerr := n.retry(ctx, func() error {
				_, err := n.settleMeta(ctx, ref, attempt)
				if errors.Is(err, ErrNoGroup) {
					gone, err = true, nil
				}
				return err
			})
			switch {
			case gone:
				return nil
			case rerr != nil:
				return fmt.Errorf("gcs: delete %s: %w", group, errors.Join(err, rerr))
			}
			// Still there: the delete did not commit; again.
		case err != nil:
			return fmt.Errorf("gcs: delete %s: %w", group, err)
		case res.Committed:
			n.log.Debug().Str("group", group).Uint64("memnode", ref.home).Msg("deleted group")
			return nil
		}
	}
}

// tombstone is the index slot of a deleted group.
func tombstone() []byte {
	b := make([]byte, IndexSlotSize)
	putU64s(b, indexDeleted)
	return b
}
