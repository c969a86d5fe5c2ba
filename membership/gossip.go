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
// length-prefixed (u8) strings: id, gRPC address, gossip address | then an
// optional flags u8 (bit 0: Tentative; absent reads as 0).
const metaVersion = 1

const metaTentative = 1 // flags bit: Meta.Tentative

// Meta is what a process advertises in its memberlist metadata.
type Meta struct {
	ID          string
	Incarnation uint64
	GRPCAddr    string
	GossipAddr  string
	// Tentative: the process has not registered yet, and Incarnation is
	// the one it will try to register (the table's maximum + 1 when it
	// started), which another life of its id may register instead.
	Tentative bool
}

func encodeMeta(m Meta) []byte {
	b := []byte{metaVersion}
	b = binary.LittleEndian.AppendUint64(b, m.Incarnation)
	for _, s := range []string{m.ID, m.GRPCAddr, m.GossipAddr} {
		b = append(b, byte(len(s)))
		b = append(b, s...)
	}
	var flags byte
	if m.Tentative {
		flags |= metaTentative
	}
	return append(b, flags)
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
	if len(b) > 0 {
		m.Tentative = b[0]&metaTentative != 0
	}
	return m, nil
}

// gossipDelegate serves our metadata and turns memberlist's events into
// observations. Every method is quick and never blocks: memberlist calls
// them from its packet and probe loops.
//
// memberlist knows a process life by its node name, id + "/" + a random
// nonce drawn at Start (gossipName), so two lives of one id are two
// memberlist nodes: a process restarted before the others noticed its crash
// is taken in at once, whatever its address, and a suspicion or death
// gossiped about the old life cannot land on the new one. (With the id as
// the name, memberlist refused the new life while the old held the name,
// and a death declared for the old life by one member, gossiped to a member
// that had already taken in the new life, killed the new one there: its
// row was declared dead with the new incarnation as evidence.) view
// reports, per id, the life with the highest incarnation.
type gossipDelegate struct {
	self string // our memberlist name
	now  func() time.Time
	mu   struct {
		sync.Mutex
		meta []byte
		// lives: per memberlist name (one process life), its id and the
		// latest observation.
		lives map[string]life
	}
	poke chan struct{} // capacity 1: "the view changed"
}

type life struct {
	id string
	o  Observation
}

// forgetDead is how long a dead or left life stays in the view. memberlist
// forgets dead nodes within GossipToTheDeadTime (seconds); by then the table
// has long recorded the death, and a row still live without evidence is
// declared dead after AbsentTimeout anyway. Without it the view grew by one
// entry per process life for the lifetime of the node (CLI and agent ids
// are per pid).
const forgetDead = 5 * time.Minute

// gossipName is the memberlist node name of one life of process id.
func gossipName(id, nonce string) string { return id + "/" + nonce }

// gossipID is the process id of memberlist node name (what gossipName was
// given); names without a nonce are taken whole.
func gossipID(name string) string {
	if i := strings.LastIndexByte(name, '/'); i >= 0 {
		return name[:i]
	}
	return name
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
	id := gossipID(n.Name)
	var inc uint64
	tentative := false
	if m, err := decodeMeta(n.Meta); err == nil {
		inc, tentative = m.Incarnation, m.Tentative
		id = m.ID
	}
	seen := SeenAlive
	switch {
	case n.State == memberlist.StateLeft:
		seen = SeenLeft
	case gone || n.State == memberlist.StateDead:
		seen = SeenDead
	}
	d.mu.Lock()
	old, ok := d.mu.lives[n.Name]
	o := Observation{Seen: seen, Incarnation: inc, Tentative: tentative, Since: d.now()}
	if ok && old.o.Seen == seen && old.o.Incarnation == inc {
		o.Since = old.o.Since
	}
	if inc == 0 && ok {
		o.Incarnation, o.Tentative = old.o.Incarnation, old.o.Tentative
	}
	d.mu.lives[n.Name] = life{id: id, o: o}
	d.mu.Unlock()
	select {
	case d.poke <- struct{}{}:
	default:
	}
}

// view is the observation per process id: of its lives, an alive one if
// any, else a dead or left one; among those the highest incarnation, then
// a registered one (not Tentative), then the latest. Alive first: a second process started
// under a live process's id that failed before registering (its
// metadata's tentative incarnation above the live row's) must not have
// its death taken for the live process's; the other way round — the
// newer life registered and died while memberlist still shows the older
// one alive, which it was told nothing about — only waits until
// memberlist declares the older one dead too, as when memberlist knew
// each id under one name. Lives dead or left for forgetDead are dropped,
// as are dead or left lives of an id that has a newer one.
func (d *gossipDelegate) view() map[string]Observation {
	now := d.now()
	d.mu.Lock()
	defer d.mu.Unlock()
	v := make(map[string]Observation, len(d.mu.lives))
	for name, l := range d.mu.lives {
		if l.o.Seen != SeenAlive && now.Sub(l.o.Since) > forgetDead {
			delete(d.mu.lives, name)
			continue
		}
		if cur, ok := v[l.id]; !ok || better(l.o, cur) {
			v[l.id] = l.o
		}
	}
	newest := make(map[string]uint64, len(v))
	for _, l := range d.mu.lives {
		newest[l.id] = max(newest[l.id], l.o.Incarnation)
	}
	for name, l := range d.mu.lives {
		if l.o.Seen != SeenAlive && l.o.Incarnation < newest[l.id] {
			delete(d.mu.lives, name)
		}
	}
	return v
}

// aliveProcesses counts the process ids other than self that have a life
// gossip shows alive.
func (d *gossipDelegate) aliveProcesses(self string) int {
	k := 0
	for id, o := range d.view() {
		if id != self && o.Seen == SeenAlive {
			k++
		}
	}
	return k
}

// better says whether observation a of one life outranks b of another life
// of the same id (see view).
func better(a, b Observation) bool {
	switch {
	case (a.Seen == SeenAlive) != (b.Seen == SeenAlive):
		return a.Seen == SeenAlive
	case a.Incarnation != b.Incarnation:
		return a.Incarnation > b.Incarnation
	case a.Tentative != b.Tentative:
		return !a.Tentative
	}
	return a.Since.After(b.Since)
}

// logBridge turns memberlist's log lines ("[DEBUG] memberlist: ...") into
// zerolog events at the matching level.
// A ping for an older life of this process (id), which the others probe at
// the address this life took over after a restart, is expected until they
// declare that life dead: it is logged at debug level.
type logBridge struct {
	log zerolog.Logger
	id  string
}

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
		if lvl > zerolog.DebugLevel && b.id != "" && b.olderLife(msg) {
			lvl = zerolog.DebugLevel
		}
		b.log.WithLevel(lvl).Str("component", "memberlist").Msg(msg)
	}
	return len(p), nil
}

// olderLife says whether msg is memberlist's "Got ping for unexpected node
// NAME" for a name of this process's id.
func (b logBridge) olderLife(msg string) bool {
	const pre = "Got ping for unexpected node "
	if !strings.HasPrefix(msg, pre) {
		return false
	}
	name, _, _ := strings.Cut(msg[len(pre):], " ")
	return gossipID(strings.Trim(name, "'")) == b.id
}

// newStdLogger bridges memberlist's log of process id to l.
func newStdLogger(l zerolog.Logger, id string) *log.Logger {
	return log.New(logBridge{l, id}, "", 0)
}

// memberlistConfig builds memberlist's configuration from ours.
func memberlistConfig(cfg *Config, d *gossipDelegate, logger *log.Logger) (*memberlist.Config, error) {
	mc := memberlist.DefaultLocalConfig()
	mc.Name = d.self
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
	// Names are per life (gossipName), so a restarted process never
	// reclaims a dead name; a name's address only changes if an operator
	// gives one life a new address, which is let in at once. The table,
	// not memberlist, fences old incarnations.
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
