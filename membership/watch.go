package membership

import (
	"bytes"
	"context"
	"fmt"
	"time"

	"github.com/tutti-gcs/tutti/client"
)

// ReadTable reads the whole process table in one minitransaction
// (linearizable). It needs no Node: tools such as `tutti members` use it.
func ReadTable(ctx context.Context, cl *client.Client, cfg TableConfig) (Table, error) {
	if err := cfg.Validate(); err != nil {
		return Table{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	res, err := cl.Exec(ctx, readTableTx(cfg))
	if err != nil {
		return Table{}, err
	}
	return decodeTable(cfg, res.Reads[0], res.Reads[1])
}

// Watcher follows the process table from outside any Node: Poll returns
// the changes since the last call, one per version, in order. Not safe for
// concurrent use.
type Watcher struct {
	cl    *client.Client
	cfg   TableConfig
	table Table
}

// NewWatcher reads the table; Poll reports what changes after it.
func NewWatcher(ctx context.Context, cl *client.Client, cfg TableConfig) (*Watcher, error) {
	t, err := ReadTable(ctx, cl, cfg)
	if err != nil {
		return nil, err
	}
	return &Watcher{cl: cl, cfg: cfg, table: t}, nil
}

// Table returns the table as of the last Poll (or NewWatcher).
func (w *Watcher) Table() Table { return w.table.clone() }

// Poll reads the header; if the version moved, it reads the log entries in
// between (one minitransaction) and applies them in order. If the log no
// longer holds them (more than LogSize versions behind), it re-reads every
// row and reports the differences as Resync changes. On error, the changes
// applied so far are returned with it.
func (w *Watcher) Poll(ctx context.Context) ([]Change, error) {
	c := w.cfg
	var out []Change
	for {
		octx, cancel := context.WithTimeout(ctx, opTimeout)
		res, err := w.cl.Exec(octx, client.NewTx().Read(c.Memnode, c.Base, headerSize))
		cancel()
		if err != nil {
			return out, err
		}
		h, err := decodeHeader(res.Reads[0], c)
		if err != nil {
			return out, err
		}
		cur := w.table
		if h.version == cur.Version {
			return out, nil
		}
		if h.version < cur.Version || h.version-cur.Version > uint64(c.LogSize) {
			cs, err := w.resync(ctx)
			return append(out, cs...), err
		}
		tx := client.NewTx()
		for v := cur.Version + 1; v <= h.version; v++ {
			tx.Read(c.Memnode, c.entryAddr(v), entrySize)
		}
		octx, cancel = context.WithTimeout(ctx, opTimeout)
		res, err = w.cl.Exec(octx, tx)
		cancel()
		if err != nil {
			return out, err
		}
		t := cur.clone()
		var cs []Change
		for i, b := range res.Reads {
			v, r, err := decodeEntry(b)
			if err != nil {
				return out, err
			}
			if v != cur.Version+1+uint64(i) {
				// Overwritten meanwhile: fall back to the rows.
				cs, err := w.resync(ctx)
				return append(out, cs...), err
			}
			old := t.slotRow(r.Slot)
			t.set(r)
			t.Version, t.format = v, tableFormat
			t.MaxIncarnation = max(t.MaxIncarnation, r.Incarnation)
			cs = append(cs, Change{Version: v, Kind: classify(old, r), Row: r, Old: old})
		}
		w.table = t
		out = append(out, cs...)
	}
}

func (w *Watcher) resync(ctx context.Context) ([]Change, error) {
	t, err := ReadTable(ctx, w.cl, w.cfg)
	if err != nil {
		return nil, err
	}
	old := w.table
	w.table = t
	var cs []Change
	for s := 0; s < w.cfg.MaxRows; s++ {
		o, r := old.slotRow(s), t.slotRow(s)
		if !bytes.Equal(encodeRow(o), encodeRow(r)) {
			cs = append(cs, Change{Version: t.Version, Kind: classify(o, r), Row: r, Old: o, Resync: true})
		}
	}
	return cs, nil
}

// String renders a row for logs and tools.
func (r Row) String() string {
	return fmt.Sprintf("%s#%d %s since %s (grpc %s, gossip %s)", r.ID, r.Incarnation, r.State,
		r.Since.UTC().Format(time.RFC3339Nano), r.GRPCAddr, r.GossipAddr)
}
