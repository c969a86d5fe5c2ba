package service

import (
	"google.golang.org/protobuf/proto"

	"github.com/tutti-gcs/tutti/api/tuttipb"
	"github.com/tutti-gcs/tutti/memnode"
)

func kindFromWire(k tuttipb.Kind) (memnode.Kind, bool) {
	switch k {
	case tuttipb.Kind_KIND_EXEC, tuttipb.Kind_KIND_EXEC_APPEND:
		return memnode.KindExec, true
	case tuttipb.Kind_KIND_PREPARE:
		return memnode.KindPrepare, true
	case tuttipb.Kind_KIND_COMMIT:
		return memnode.KindCommit, true
	case tuttipb.Kind_KIND_ABORT:
		return memnode.KindAbort, true
	case tuttipb.Kind_KIND_ABORT_UNLESS_VOTED:
		return memnode.KindAbortUnlessVoted, true
	}
	return 0, false
}

// opFromWire converts the items of a request. The slices alias the request's
// buffers; memnode.AppendEntry copies them into the log entry.
func opFromWire(req *tuttipb.Request) memnode.Op {
	var op memnode.Op
	if n := len(req.GetCompares()); n > 0 {
		op.Compares = make([]memnode.Compare, n)
		for i, c := range req.GetCompares() {
			op.Compares[i] = memnode.Compare{Addr: c.GetAddr(), Data: c.GetData()}
		}
	}
	if n := len(req.GetReads()); n > 0 {
		op.Reads = make([]memnode.Read, n)
		for i, r := range req.GetReads() {
			op.Reads[i] = memnode.Read{Addr: r.GetAddr(), Len: r.GetLen()}
		}
	}
	if n := len(req.GetWrites()); n > 0 {
		op.Writes = make([]memnode.Write, n)
		for i, w := range req.GetWrites() {
			op.Writes[i] = memnode.Write{Addr: w.GetAddr(), Data: w.GetData()}
		}
	}
	if n := len(req.GetAppends()); n > 0 {
		op.Appends = make([]memnode.Append, n)
		for i, a := range req.GetAppends() {
			op.Appends[i] = memnode.Append{Tail: a.GetTail(), Head: a.GetHead(), Limit: a.GetLimit(), Ring: a.GetRing(),
				Size: a.GetSize(), Count: a.GetCount(), Add: a.GetAdd(), Data: a.GetData()}
		}
	}
	if n := len(req.GetRelocs()); n > 0 {
		op.Relocs = make([]memnode.Reloc, n)
		for i, r := range req.GetRelocs() {
			op.Relocs[i] = memnode.Reloc{Append: r.GetAppend(), Count: r.GetCount(), Write: r.GetWrite(),
				Item: r.GetItem(), Off: r.GetOff()}
		}
	}
	return op
}

// appendedToWire converts Result.Appended; nil if empty.
func appendedToWire(as []memnode.Appended) []*tuttipb.Appended {
	if len(as) == 0 {
		return nil
	}
	buf := make([]tuttipb.Appended, len(as))
	out := make([]*tuttipb.Appended, len(as))
	for i, a := range as {
		buf[i].Tail, buf[i].Count = a.Tail, a.Count
		out[i] = &buf[i]
	}
	return out
}

// tidsFromWire converts a list of tids; nil if empty.
func tidsFromWire(ts []*tuttipb.Tid) []memnode.TID {
	if len(ts) == 0 {
		return nil
	}
	out := make([]memnode.TID, len(ts))
	for i, t := range ts {
		out[i] = memnode.TID{Client: t.GetClient(), Seq: t.GetSeq(), Time: t.GetTime()}
	}
	return out
}

func protoSize(m proto.Message) int { return proto.Size(m) }

// sizeBound is an upper bound of protoSize(req), much cheaper to compute: a
// request's fields other than byte strings take at most 32 bytes per
// repeated element (tags, lengths and varints) but 40 per tid (three
// varints of up to 10 bytes, their tags, the element's tag and length: 35),
// 96 per append (seven varints and their tags, 77, the data's tag and
// length, the element's) and 40 per reloc (three 32-bit varints, two
// bools, their tags: 23, the element's), and 128 in all.
func sizeBound(req *tuttipb.Request) int {
	n := 128 + 32*(len(req.GetParticipants())+len(req.GetReads())) +
		40*(len(req.GetMoreTids())+len(req.GetCommitTids())+len(req.GetAbortTids())+len(req.GetFenceTids())+
			len(req.GetRelocs()))
	for _, a := range req.GetAppends() {
		n += 96 + len(a.GetData())
	}
	for _, c := range req.GetCompares() {
		n += 32 + len(c.GetData())
	}
	for _, w := range req.GetWrites() {
		n += 32 + len(w.GetData())
	}
	return n
}
