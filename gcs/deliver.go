package gcs

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/tutti-gcs/tutti/client"
)

// viewState is the view a member delivers in.
type viewState struct {
	id    uint64
	slots map[int]viewMember
}

// deliverLoop reads the order log from the position of the view record
// that admitted this member and delivers views and messages strictly in
// log order. It polls the tail with an adaptive backoff (PollMin doubling
// to PollMax while nothing arrives) and is woken at once by local
// multicasts and view changes.
//
// When the cluster serves watch streams, the loop also subscribes to the
// header's (view, tail, msgs) words with client.Watch and wakes on every
// notification; the poll then only backs it up.
func (g *Group) deliverLoop() {
	defer g.wg.Done()
	defer close(g.done)
	defer close(g.events)
	n := g.n
	var watchC <-chan client.WatchEvent
	wctx, wcancel := context.WithTimeout(g.ctx, 2*time.Second)
	w, werr := n.cl.Watch(wctx, g.ref.home, client.Range{Addr: g.ref.meta + offView, Len: 24})
	wcancel()
	if werr == nil {
		defer w.Close()
		watchC = w.C()
	} else {
		n.log.Debug().Err(werr).Msg("no watch stream: polling the order log")
	}
	pos := g.start0
	var cur *viewState
	wait := n.cfg.PollMin
	var buf []byte // bytes of the log from pos
	for {
		if g.ctx.Err() != nil {
			return
		}
		h, err := n.readHeader(g.ctx, g.ref)
		if err != nil {
			if g.ctx.Err() != nil {
				return
			}
			n.log.Debug().Err(err).Msg("delivery: reading the header")
			if sleepCtx(g.ctx, 10*time.Millisecond) != nil {
				return
			}
			continue
		}
		g.head.Store(max(g.head.Load(), h.head))
		if h.head > pos {
			g.evict(h.view, "fell behind the order log")
			return
		}
		if h.tail <= pos {
			t := time.NewTimer(wait)
			select {
			case <-g.ctx.Done():
				t.Stop()
				return
			case <-g.wake:
				t.Stop()
				wait = n.cfg.PollMin
			case _, ok := <-watchC:
				t.Stop()
				if !ok {
					watchC = nil // the watch ended: poll only
				}
				wait = n.cfg.PollMin
			case <-t.C:
				wait = min(2*wait, n.cfg.PollMax)
			}
			continue
		}
		wait = n.cfg.PollMin
		want := int(min(h.tail-pos, uint64(n.cfg.ReadChunk)))
		buf, err = n.readRing(g.ctx, g.ref, pos, want)
		if err != nil {
			if g.ctx.Err() != nil {
				return
			}
			continue
		}
		for len(buf) > 0 {
			rec, err := decodeRecord(buf, pos)
			if errors.Is(err, errShortRecord) {
				if len(buf) >= recHeader && int(le.Uint32(buf[8:])) > n.cfg.ReadChunk && len(buf) == want {
					// A record larger than one chunk: read it whole.
					b, rerr := n.readRing(g.ctx, g.ref, pos, int(le.Uint32(buf[8:])))
					if rerr != nil {
						break
					}
					buf = b
					continue
				}
				break
			}
			if err != nil {
				g.evict(h.view, err.Error())
				return
			}
			var stop bool
			cur, stop = g.deliverRecord(cur, rec)
			if stop {
				return
			}
			pos += uint64(rec.size)
			g.dLog.Store(pos)
			buf = buf[rec.size:]
		}
	}
}

// deliverRecord delivers one record; stop reports the end of this
// membership (left, evicted or closed).
func (g *Group) deliverRecord(cur *viewState, rec record) (*viewState, bool) {
	n := g.n
	switch rec.kind {
	case recView:
		vb, err := decodeView(rec.body)
		if err != nil {
			g.evict(rec.view, err.Error())
			return cur, true
		}
		in := false
		nv := &viewState{id: rec.view, slots: map[int]viewMember{}}
		v := &View{ID: rec.view, Joined: vb.joined, Left: vb.left, Reason: vb.reason}
		var joiner viewMember
		for _, m := range vb.members {
			nv.slots[m.slot] = m
			v.Members = append(v.Members, m.name)
			if m.tag == g.self.tag {
				in = true
			}
			if m.tag == vb.joiner {
				joiner = m
			}
		}
		if !in {
			if cur == nil {
				g.evict(rec.view, fmt.Sprintf("%s: not in the view that should admit it", ErrCorrupt))
				return cur, true
			}
			if g.leaving.Load() {
				g.fail(ErrNotMember)
				return cur, true
			}
			g.evict(rec.view, vb.reason)
			return cur, true
		}
		if !g.send(v) {
			return cur, true
		}
		g.dMsg.Store(rec.msgBase)
		if vb.provider == g.self.tag && vb.joiner != 0 && cur != nil {
			g.provide(joiner)
		}
		return nv, false
	case recInline, recRef:
		if cur == nil || rec.view != cur.id {
			g.evict(rec.view, fmt.Sprintf("%s: batch of view %d outside the view", ErrCorrupt, rec.view))
			return cur, true
		}
		sender, ok := cur.slots[rec.slot]
		if !ok || sender.tag != rec.tag {
			g.evict(rec.view, fmt.Sprintf("%s: batch from slot %d not in view %d", ErrCorrupt, rec.slot, rec.view))
			return cur, true
		}
		body := rec.body
		if rec.kind == recRef {
			b, err := g.readBlob(rec)
			if err != nil {
				if g.ctx.Err() == nil {
					g.evict(rec.view, err.Error())
				}
				return cur, true
			}
			body = b
		}
		payloads, err := decodeMsgs(body, rec.count)
		if err != nil {
			g.evict(rec.view, err.Error())
			return cur, true
		}
		for i, p := range payloads {
			m := &Message{View: rec.view, Sender: sender.name, Seq: rec.firstSeq + uint64(i), Pos: rec.msgBase + uint64(i) + 1, Payload: p}
			if !g.send(m) {
				return cur, true
			}
			g.dMsg.Store(m.Pos)
		}
		return cur, false
	}
	n.log.Warn().Uint8("kind", rec.kind).Msg("unknown order record")
	g.evict(rec.view, fmt.Sprintf("%s: record kind %d", ErrCorrupt, rec.kind))
	return cur, true
}

// readBlob reads a batch from the sender's queue ring and checks it.
func (g *Group) readBlob(rec record) ([]byte, error) {
	ref, err := decodeRef(rec.body)
	if err != nil {
		return nil, err
	}
	n := g.n
	tx := client.NewTx()
	items := ringSplit(ref.qAddr, ref.qLen, ref.qPos, ref.bytes)
	for _, it := range items {
		tx.Read(ref.qMemnode, it.addr, uint32(it.n))
	}
	var res *client.Result
	if err := n.retry(g.ctx, func() error {
		var err error
		res, err = n.exec(g.ctx, tx)
		return err
	}); err != nil {
		return nil, err
	}
	b := res.Reads[0]
	if len(items) == 2 {
		b = append(append([]byte(nil), b...), res.Reads[1]...)
	}
	if len(b) < blobHeader || u64(b, 0) != ref.qPos || u64(b, 16) != rec.tag || u64(b, 24) != rec.firstSeq {
		return nil, fmt.Errorf("%w: queue position %d no longer holds the batch (reclaimed)", ErrCorrupt, ref.qPos)
	}
	return b[blobHeader:], nil
}

// send hands ev to the application; false if the group stopped.
func (g *Group) send(ev Event) bool {
	select {
	case g.events <- ev:
		return true
	case <-g.ctx.Done():
		return false
	}
}

// evict delivers *Evicted (best effort) and fails later Multicasts.
func (g *Group) evict(view uint64, reason string) {
	g.fail(ErrEvicted)
	g.n.log.Info().Str("group", g.ref.name).Str("member", g.self.name).Uint64("view", view).Str("reason", reason).Msg("evicted")
	g.send(&Evicted{View: view, Reason: reason})
}
