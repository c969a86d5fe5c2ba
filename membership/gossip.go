package membership

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/rs/zerolog"
)

// Gossip metadata, version 1: ver u8 (1) | incarnation u64 | then three
// length-prefixed (u8) strings: id, gRPC address, gossip address.
const metaVersion = 1

// Meta is what a process advertises in its memberlist metadata.
type Meta struct {
	ID          string
	Incarnation uint64
	GRPCAddr    string
	GossipAddr  string
}

func encodeMeta(m Meta) []byte {
	b := []byte{metaVersion}
	b = binary.LittleEndian.AppendUint64(b, m.Incarnation)
	for _, s := range []string{m.ID, m.GRPCAddr, m.GossipAddr} {
		b = append(b, byte(len(s)))
		b = append(b, s...)
	}
	return b
}

func decodeMeta(b []byte) (Meta, error) {
	if len(b) < 9 || b[0] != metaVersion {
		return Meta{}, errors.New("membership: unknown gossip metadata")
	}
	m := Meta{Incarnation: binary.LittleEndian.Uint64(b[1:])}
	b = b[9:]
	var ss [3]string
	for i := range ss {
		if len(b) < 1 || len(b) < 1+int(b[0]) {
			return Meta{}, errors.New("membership: truncated gossip metadata")
		}
		ss[i], b = string(b[1:1+int(b[0])]), b[1+int(b[0]):]
	}
	m.ID, m.GRPCAddr, m.GossipAddr = ss[0], ss[1], ss[2]
	return m, nil
}

// gossipDelegate serves our metadata and turns memberlist's events into
// observations. Every method is quick and never blocks: memberlist calls
// them from its packet and probe loops.
type gossipDelegate struct {
	self string
	now  func() time.Time
	mu   struct {
		sync.Mutex
		meta []byte
		view map[string]Observation
	}
	poke chan struct{} // capacity 1: "the view changed"
}

func (d *gossipDelegate) setMeta(m Meta) {
	d.mu.Lock()
	d.mu.meta = encodeMeta(m)
	d.mu.Unlock()
}

// NodeMeta implements memberlist.Delegate.
func (d *gossipDelegate) NodeMeta(limit int) []byte {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.mu.meta) > limit {
		return nil
	}
	return append([]byte(nil), d.mu.meta...)
}

// NotifyMsg, GetBroadcasts, LocalState, MergeRemoteState: unused.
func (d *gossipDelegate) NotifyMsg([]byte)                           {}
func (d *gossipDelegate) GetBroadcasts(overhead, limit int) [][]byte { return nil }
func (d *gossipDelegate) LocalState(join bool) []byte                { return nil }
func (d *gossipDelegate) MergeRemoteState(buf []byte, join bool)     {}

// nodeEvents implements memberlist.EventDelegate on the same view.
type nodeEvents struct{ d *gossipDelegate }

func (e nodeEvents) NotifyJoin(n *memberlist.Node)   { e.d.observe(n, false) }
func (e nodeEvents) NotifyLeave(n *memberlist.Node)  { e.d.observe(n, true) }
func (e nodeEvents) NotifyUpdate(n *memberlist.Node) { e.d.observe(n, false) }

// observe records an event. In memberlist v0.7.0 the Node handed to
// NotifyLeave does not carry the dead/left state (Node.State is shadowed by
// the internal nodeState.State and stays StateAlive), so every NotifyLeave
// counts as dead unless Node.State says left. Graceful leavers write their
// own Left row before leaving gossip, so the table still tells the two
// apart.
func (d *gossipDelegate) observe(n *memberlist.Node, gone bool) {
	if n.Name == d.self {
		return
	}
	var inc uint64
	if m, err := decodeMeta(n.Meta); err == nil {
		inc = m.Incarnation
	}
	seen := SeenAlive
	switch {
	case n.State == memberlist.StateLeft:
		seen = SeenLeft
	case gone || n.State == memberlist.StateDead:
		seen = SeenDead
	}
	d.mu.Lock()
	old, ok := d.mu.view[n.Name]
	o := Observation{Seen: seen, Incarnation: inc, Since: d.now()}
	if ok && old.Seen == seen && old.Incarnation == inc {
		o.Since = old.Since
	}
	if inc == 0 && ok {
		o.Incarnation = old.Incarnation
	}
	d.mu.view[n.Name] = o
	d.mu.Unlock()
	select {
	case d.poke <- struct{}{}:
	default:
	}
}

func (d *gossipDelegate) view() map[string]Observation {
	d.mu.Lock()
	defer d.mu.Unlock()
	v := make(map[string]Observation, len(d.mu.view))
	for k, o := range d.mu.view {
		v[k] = o
	}
	return v
}

// logBridge turns memberlist's log lines ("[DEBUG] memberlist: ...") into
// zerolog events at the matching level.
type logBridge struct{ log zerolog.Logger }

var _ io.Writer = logBridge{}

func (b logBridge) Write(p []byte) (int, error) {
	for _, line := range bytes.Split(p, []byte("\n")) {
		s := strings.TrimSpace(string(line))
		if s == "" {
			continue
		}
		lvl, msg := zerolog.InfoLevel, s
		for _, pre := range []struct {
			tag string
			lvl zerolog.Level
		}{
			{"[DEBUG]", zerolog.DebugLevel},
			{"[TRACE]", zerolog.TraceLevel},
			{"[INFO]", zerolog.InfoLevel},
			{"[WARN]", zerolog.WarnLevel},
			{"[ERR]", zerolog.ErrorLevel},
			{"[ERROR]", zerolog.ErrorLevel},
		} {
			if strings.HasPrefix(s, pre.tag) {
				lvl, msg = pre.lvl, strings.TrimSpace(s[len(pre.tag):])
				break
			}
		}
		msg = strings.TrimPrefix(msg, "memberlist: ")
		if lvl > zerolog.DebugLevel && strings.Contains(msg, "use of closed network connection") {
			// memberlist's own socket, closed by Shutdown while its
			// prober or gossip still ran: shutdown, not a fault.
			lvl = zerolog.DebugLevel
		}
		b.log.WithLevel(lvl).Str("component", "memberlist").Msg(msg)
	}
	return len(p), nil
}

func newStdLogger(l zerolog.Logger) *log.Logger { return log.New(logBridge{l}, "", 0) }

// memberlistConfig builds memberlist's configuration from ours.
func memberlistConfig(cfg *Config, d *gossipDelegate, logger *log.Logger) (*memberlist.Config, error) {
	mc := memberlist.DefaultLocalConfig()
	mc.Name = cfg.ID
	host, port, err := splitHostPort(cfg.Bind)
	if err != nil {
		return nil, fmt.Errorf("membership: Bind %q: %w", cfg.Bind, err)
	}
	mc.BindAddr, mc.BindPort = host, port
	if cfg.Advertise != "" {
		ah, ap, err := splitHostPort(cfg.Advertise)
		if err != nil {
			return nil, fmt.Errorf("membership: Advertise %q: %w", cfg.Advertise, err)
		}
		mc.AdvertiseAddr, mc.AdvertisePort = ah, ap
	}
	g := cfg.Gossip
	mc.ProbeInterval = g.ProbeInterval
	mc.ProbeTimeout = g.ProbeTimeout
	mc.SuspicionMult = g.SuspicionMult
	mc.SuspicionMaxTimeoutMult = g.SuspicionMaxTimeoutMult
	mc.IndirectChecks = g.IndirectChecks
	mc.GossipInterval = g.GossipInterval
	mc.RetransmitMult = g.RetransmitMult
	mc.Delegate = d
	mc.Events = nodeEvents{d}
	mc.Logger = logger
	// A restarted process (new incarnation, maybe a new port) must be let
	// back in at once under the same name; the table, not memberlist,
	// fences old incarnations.
	mc.DeadNodeReclaimTime = 1
	switch {
	case cfg.Keyring != nil:
		mc.Keyring = cfg.Keyring
	case len(cfg.Key) > 0:
		kr, err := memberlist.NewKeyring(nil, cfg.Key)
		if err != nil {
			return nil, fmt.Errorf("membership: Key: %w", err)
		}
		mc.Keyring = kr
	}
	if mc.Keyring != nil {
		mc.GossipVerifyIncoming, mc.GossipVerifyOutgoing = true, true
	}
	return mc, nil
}
