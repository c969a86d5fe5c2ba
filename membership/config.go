package membership

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/rs/zerolog"

	"github.com/tutti-gcs/tutti/client"
)

// Config configures a membership Node.
type Config struct {
	// ID is the process id: the table row's key (memberlist's node name
	// is ID + "/" + a nonce per Start). 1..MaxIDLen bytes, unique per process in the cluster. Required.
	ID string
	// Client executes the table's minitransactions. Required; the Node does
	// not close it.
	Client *client.Client
	// Table places the process table; zero means DefaultTable.
	Table TableConfig

	// Bind is the gossip listen address, host:port (UDP and TCP on the
	// same port). Port 0 picks a free port; GossipAddr reports it.
	// Default "0.0.0.0:7946".
	Bind string
	// Advertise is the gossip address other processes use, host:port;
	// default: derived from Bind (a private address when Bind is 0.0.0.0).
	Advertise string
	// GRPCAddr is the gRPC address this process serves, recorded in its
	// metadata and table row (may be empty for pure clients).
	GRPCAddr string
	// Seeds are gossip addresses of processes to join. Empty starts a new
	// gossip cluster (the table may still hold earlier processes).
	Seeds []string

	// Key, if set, encrypts and authenticates gossip with AES (16, 24 or 32
	// bytes); every process must share it. Keyring, if set, is used instead
	// (for rotation, see doc.go); Key is then ignored.
	Key     []byte
	Keyring *memberlist.Keyring

	// Logger receives the package's and memberlist's logs. Disabled if zero.
	Logger zerolog.Logger
	// Gossip is memberlist's failure-detection timing; zero fields take
	// DefaultGossip's.
	Gossip GossipTiming
	// Timing is the table protocol's timing; zero fields take
	// DefaultTiming's.
	Timing Timing
	// Now is the clock for row timestamps and decisions; time.Now if nil.
	Now func() time.Time

	// wrapTransport, tests only: wraps the memberlist transport (partitions).
	wrapTransport func(memberlist.NodeAwareTransport) memberlist.NodeAwareTransport
	// execFault, tests only: runs in place of a plan's minitransaction;
	// do runs the real one.
	execFault func(p Plan, do func() (*client.Result, error)) (*client.Result, error)
	// afterResolveRead, tests only: called after each settling read of a
	// plan whose outcome was unknown returned, before it is decided.
	afterResolveRead func()
	// beforeGossipLeave, tests only: called by Leave after the table
	// change, before it leaves gossip.
	beforeGossipLeave func()
	// resolveFault, tests only: runs in place of each settling read; do
	// runs the real one.
	resolveFault func(do func() (*client.Result, error)) (*client.Result, error)
}

// GossipTiming is memberlist's failure detection (all on top of
// memberlist.DefaultLocalConfig). See doc.go for the measured figures
// behind the defaults.
type GossipTiming struct {
	// ProbeInterval: how often a random member is probed.
	ProbeInterval time.Duration
	// ProbeTimeout: how long to wait for a probe's ack (an RTT bound).
	ProbeTimeout time.Duration
	// SuspicionMult × log10(N+1) × ProbeInterval is the base time a
	// suspected member has to refute before it is declared dead.
	SuspicionMult int
	// SuspicionMaxTimeoutMult × base is the upper bound of that time (used
	// when few others confirm the suspicion).
	SuspicionMaxTimeoutMult int
	// IndirectChecks: members asked to probe on our behalf after a miss.
	IndirectChecks int
	// GossipInterval: how often gossip messages are sent.
	GossipInterval time.Duration
	// RetransmitMult × log10(N+1): retransmissions of each broadcast.
	RetransmitMult int
}

// DefaultGossip: with 7 processes a SIGKILLed process was dead in the table
// after 1.2 s at p50 and 1.9 s at p99, with no false removal in a 10-minute
// soak beside a CPU hog (README, Membership). Suspicion 4 / 6 rather than the
// 3 / 4 of reference/memberlist-notes.md: 3 / 4 falsely removed processes
// when the machine's load average reached 15–20.
var DefaultGossip = GossipTiming{
	ProbeInterval:           200 * time.Millisecond,
	ProbeTimeout:            100 * time.Millisecond,
	SuspicionMult:           4,
	SuspicionMaxTimeoutMult: 6,
	IndirectChecks:          3,
	GossipInterval:          100 * time.Millisecond,
	RetransmitMult:          4,
}

// Timing is the process table protocol's timing.
type Timing struct {
	// PollInterval: how often the node reads the table header to learn of
	// changes (and of its own eviction) when the cluster serves no watch
	// stream; with one, the header's writes are notified at once and the
	// read is a backup every 4 × PollInterval. Memberlist events also
	// trigger a read.
	PollInterval time.Duration
	// TakeoverTimeout: the decider at rank position p acts p×TakeoverTimeout
	// after the evidence; position 0 at once.
	TakeoverTimeout time.Duration
	// AbsentTimeout: a live row whose process memberlist does not show
	// alive at all (never seen, or only an older incarnation seen dead) is
	// declared dead after this long.
	AbsentTimeout time.Duration
	// IsolationDelay: extra wait for an observer that sees more than half
	// of the other live processes gone (it is probably the one cut off).
	IsolationDelay time.Duration
	// JoinTimeout bounds joining the seeds at Start (with Start's ctx):
	// every seed is tried at once, and Start waits for all of them (a
	// seed that does not answer takes memberlist's TCPTimeout, 1 s) unless
	// JoinTimeout passes first; it fails if no seed answered by then.
	// LeaveTimeout bounds waiting for memberlist's leave broadcast.
	JoinTimeout  time.Duration
	LeaveTimeout time.Duration
}

// DefaultTiming is used for zero fields.
var DefaultTiming = Timing{
	PollInterval:    250 * time.Millisecond,
	TakeoverTimeout: time.Second,
	AbsentTimeout:   5 * time.Second,
	IsolationDelay:  10 * time.Second,
	JoinTimeout:     5 * time.Second,
	LeaveTimeout:    time.Second,
}

func (c *Config) defaults() {
	if c.Table == (TableConfig{}) {
		c.Table = DefaultTable
	}
	if c.Bind == "" {
		c.Bind = "0.0.0.0:7946"
	}
	g, d := &c.Gossip, DefaultGossip
	setDur(&g.ProbeInterval, d.ProbeInterval)
	setDur(&g.ProbeTimeout, d.ProbeTimeout)
	setInt(&g.SuspicionMult, d.SuspicionMult)
	setInt(&g.SuspicionMaxTimeoutMult, d.SuspicionMaxTimeoutMult)
	setInt(&g.IndirectChecks, d.IndirectChecks)
	setDur(&g.GossipInterval, d.GossipInterval)
	setInt(&g.RetransmitMult, d.RetransmitMult)
	t, dt := &c.Timing, DefaultTiming
	setDur(&t.PollInterval, dt.PollInterval)
	setDur(&t.TakeoverTimeout, dt.TakeoverTimeout)
	setDur(&t.AbsentTimeout, dt.AbsentTimeout)
	setDur(&t.IsolationDelay, dt.IsolationDelay)
	setDur(&t.JoinTimeout, dt.JoinTimeout)
	setDur(&t.LeaveTimeout, dt.LeaveTimeout)
	if c.Now == nil {
		c.Now = time.Now
	}
}

func setDur(p *time.Duration, d time.Duration) {
	if *p <= 0 {
		*p = d
	}
}

func setInt(p *int, d int) {
	if *p <= 0 {
		*p = d
	}
}

// Validate reports every problem with c (after defaults for zero fields).
func (c Config) Validate() error {
	c.defaults()
	var errs []error
	if c.ID == "" || len(c.ID) > MaxIDLen {
		errs = append(errs, fmt.Errorf("ID must be 1..%d bytes, got %q", MaxIDLen, c.ID))
	}
	if c.Client == nil {
		errs = append(errs, errors.New("Client is required"))
	}
	if err := c.Table.Validate(); err != nil {
		errs = append(errs, err)
	}
	if _, _, err := splitHostPort(c.Bind); err != nil {
		errs = append(errs, fmt.Errorf("Bind %q: %w", c.Bind, err))
	}
	if c.Advertise != "" {
		if _, _, err := splitHostPort(c.Advertise); err != nil {
			errs = append(errs, fmt.Errorf("Advertise %q: %w", c.Advertise, err))
		}
	}
	if len(c.GRPCAddr) > MaxAddrLen || len(c.Advertise) > MaxAddrLen {
		errs = append(errs, fmt.Errorf("addresses must be at most %d bytes", MaxAddrLen))
	}
	if c.Keyring != nil && len(c.Keyring.GetKeys()) == 0 {
		// memberlist encrypts only with a key in the keyring: an empty one
		// would gossip in plaintext and let a process without a key join.
		errs = append(errs, errors.New("Keyring holds no key: gossip would not be encrypted (add and use a key, or set neither Key nor Keyring)"))
	}
	if c.Keyring == nil && len(c.Key) > 0 {
		if err := memberlist.ValidateKey(c.Key); err != nil {
			errs = append(errs, fmt.Errorf("Key: %w", err))
		}
	}
	if c.Gossip.ProbeTimeout >= c.Gossip.ProbeInterval {
		errs = append(errs, fmt.Errorf("Gossip.ProbeTimeout (%v) must be below ProbeInterval (%v)", c.Gossip.ProbeTimeout, c.Gossip.ProbeInterval))
	}
	return errors.Join(errs...)
}

func splitHostPort(s string) (string, int, error) {
	h, p, err := net.SplitHostPort(s)
	if err != nil {
		return "", 0, err
	}
	port, err := strconv.Atoi(p)
	if err != nil || port < 0 || port > 65535 {
		return "", 0, fmt.Errorf("bad port %q", p)
	}
	return h, port, nil
}
