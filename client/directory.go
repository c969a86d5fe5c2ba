package client

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"slices"
	"sort"
	"strings"
)

// The directory: memnode 0 holds the cluster's layout (hosts, memnodes and
// their replica hosts, memnode limits) at a fixed region of its address
// space, so one seed address is enough to find everything. Hosts bootstrap
// it, serve it through the Cluster RPC and reconcile their replicas with
// it; administrators change it with UpdateDirectory (a minitransaction that
// compares the header, so concurrent changes never lose one another).
//
// Layout of the region (little-endian):
//
//	 0  magic "TUTD"
//	 4  format (uint16, 1 or 2)   6  reserved (2 bytes)
//	 8  version (uint64, > 0, +1 per change)
//	16  body length (uint32)   20  CRC-32C of the body
//	24  CRC-32C of bytes 0..23   28  reserved (4 zero bytes)
//	32  body (see appendBody)
//
// An all-zero header means "no directory yet".
//
// Formats. Format 1 is the body appendBody describes without host flags;
// format 2 adds one flags uvarint after each host's address (bit 0:
// drained; other bits are refused, so that a build that does not know a
// future flag cannot drop it by rewriting the directory). This build
// decodes both, and writes format 1 whenever no host has a flag set: the
// bytes are then exactly what older builds write, so a cluster keeps
// working through a rolling upgrade until an operator drains a host. The
// format number, not an optional trailing field, tells the two apart: an
// older build that meets a directory with a drained host then reports
// "unknown format 2 (this build knows 1)" and changes nothing, where a
// trailing field would read to it as a corrupt body ("trailing bytes").
const (
	// DirectoryMemnodeID is the memnode that holds the directory.
	DirectoryMemnodeID uint64 = 0
	// DirectoryAddr is where the directory's region starts in memnode 0:
	// the last MiB below 4 GiB, out of the way of applications that use
	// memnode 0's low addresses. Memnode 0 must be at least 4 GiB large.
	DirectoryAddr uint64 = 1<<32 - DirectoryRegion
	// DirectoryRegion is the size of the reserved region.
	DirectoryRegion = 1 << 20
	// DirectoryHeaderLen is the size of the header, the item an update
	// compares.
	DirectoryHeaderLen = 32

	dirMagic = "TUTD"
	// dirFormat1: no host flags. dirFormat: host flags (see Formats).
	dirFormat1 = 1
	dirFormat  = 2
	// dirFirstRead is how much one read fetches first; larger directories
	// take a second read.
	dirFirstRead = 4096
)

// ErrNoDirectory: memnode 0 holds no directory yet (the cluster has not
// finished bootstrapping).
var ErrNoDirectory = errors.New("tutti: no directory in memnode 0 yet")

// ErrBadDirectory: the directory region does not decode (wrong magic,
// unknown format, checksum mismatch).
var ErrBadDirectory = errors.New("tutti: corrupt directory")

// ErrDirectoryChange: an administrative change of the directory is refused
// (unknown memnode or host, duplicate or last replica...). Nothing changed.
var ErrDirectoryChange = errors.New("tutti: directory change refused")

// ErrTooFewHosts: a new memnode placed by default (no hosts given) needs
// more answering hosts in service (not drained) than the cluster has, or a
// replica to move off a drained host has no such host to go to
// (MoveTarget). Nothing changed.
var ErrTooFewHosts = errors.New("tutti: too few answering hosts in service")

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Directory is the cluster's layout as memnode 0 stores it.
type Directory struct {
	// Version counts changes; the first directory has version 1.
	Version  uint64             `json:"version"`
	Config   DirectoryConfig    `json:"config"`
	Hosts    []DirectoryHost    `json:"hosts"`
	Memnodes []DirectoryMemnode `json:"memnodes"`
}

// DirectoryConfig is the cluster-wide configuration.
type DirectoryConfig struct {
	// Memnode limits every request must respect.
	Size         uint64 `json:"size"`
	MaxItemBytes uint32 `json:"max_item_bytes"`
	MaxItems     uint32 `json:"max_items"`
	// Replicas is the default number of replicas of a new memnode.
	Replicas uint32 `json:"replicas"`
}

// DirectoryHost is one host of the cluster.
type DirectoryHost struct {
	ID   uint64 `json:"id"`
	Addr string `json:"addr"`
	// Drained: the host is being taken out of service (DrainHost). No new
	// replica goes on it, by default placement or by name; the replicas it
	// holds stay until moved; RemoveHost takes it out of the directory once
	// it holds none.
	Drained bool `json:"drained"`
}

// hostDrained is bit 0 of a host's flags in format 2.
const hostDrained = 1

// DirectoryMemnode places one memnode.
type DirectoryMemnode struct {
	ID uint64 `json:"id"`
	// Replicas are the hosts that must hold a replica; hosts reconcile
	// the memnode's Raft configuration toward this set.
	Replicas []uint64 `json:"replicas"`
	// Bootstrap, for a memnode created online, is its initial voter set:
	// those hosts create the Raft group with it (even if a replica change
	// since took them out of Replicas). The group's leader clears it once
	// the group exists, before any configuration change; hosts that start
	// a replica afterwards join the existing group and catch up by
	// snapshot. Replica changes keep it: clearing it before any host had
	// read it would leave the memnode with no group, only empty replicas
	// waiting for a leader.
	Bootstrap []uint64 `json:"bootstrap,omitempty"`
}

// Clone returns a deep copy.
func (d *Directory) Clone() *Directory {
	n := &Directory{Version: d.Version, Config: d.Config, Hosts: slices.Clone(d.Hosts)}
	for _, m := range d.Memnodes {
		n.Memnodes = append(n.Memnodes, DirectoryMemnode{ID: m.ID, Replicas: slices.Clone(m.Replicas), Bootstrap: slices.Clone(m.Bootstrap)})
	}
	return n
}

// Memnode returns the memnode with id, or nil.
func (d *Directory) Memnode(id uint64) *DirectoryMemnode {
	for i := range d.Memnodes {
		if d.Memnodes[i].ID == id {
			return &d.Memnodes[i]
		}
	}
	return nil
}

// Host returns the host with id, or nil.
func (d *Directory) Host(id uint64) *DirectoryHost {
	for i := range d.Hosts {
		if d.Hosts[i].ID == id {
			return &d.Hosts[i]
		}
	}
	return nil
}

// Validate reports every structural problem: duplicate ids, memnodes
// without replicas, replicas on hosts not in the host list.
func (d *Directory) Validate() error {
	var errs []error
	hosts := map[uint64]bool{}
	for _, h := range d.Hosts {
		if h.ID == 0 {
			errs = append(errs, errors.New("host id 0"))
		}
		if hosts[h.ID] {
			errs = append(errs, fmt.Errorf("host %d listed twice", h.ID))
		}
		hosts[h.ID] = true
	}
	seen := map[uint64]bool{}
	for _, m := range d.Memnodes {
		if seen[m.ID] {
			errs = append(errs, fmt.Errorf("memnode %d listed twice", m.ID))
		}
		seen[m.ID] = true
		if len(m.Replicas) == 0 {
			errs = append(errs, fmt.Errorf("memnode %d has no replicas", m.ID))
		}
		reps := map[uint64]bool{}
		for _, r := range m.Replicas {
			if !hosts[r] {
				errs = append(errs, fmt.Errorf("memnode %d: replica host %d is not in the host list", m.ID, r))
			}
			if reps[r] {
				errs = append(errs, fmt.Errorf("memnode %d: host %d listed twice", m.ID, r))
			}
			reps[r] = true
		}
		for _, r := range m.Bootstrap {
			if !hosts[r] {
				errs = append(errs, fmt.Errorf("memnode %d: bootstrap host %d is not in the host list", m.ID, r))
			}
		}
	}
	if !seen[DirectoryMemnodeID] && len(d.Memnodes) > 0 {
		errs = append(errs, errors.New("memnode 0 (the directory) is missing"))
	}
	return errors.Join(errs...)
}

func (d *Directory) normalize() {
	sort.Slice(d.Hosts, func(i, j int) bool { return d.Hosts[i].ID < d.Hosts[j].ID })
	sort.Slice(d.Memnodes, func(i, j int) bool { return d.Memnodes[i].ID < d.Memnodes[j].ID })
}

// EncodeDirectory returns the directory's region bytes: header and body.
func EncodeDirectory(d *Directory) []byte {
	body := appendBody(nil, d)
	out := make([]byte, DirectoryHeaderLen, DirectoryHeaderLen+len(body))
	copy(out, dirMagic)
	binary.LittleEndian.PutUint16(out[4:], directoryFormat(d))
	binary.LittleEndian.PutUint64(out[8:], d.Version)
	binary.LittleEndian.PutUint32(out[16:], uint32(len(body)))
	binary.LittleEndian.PutUint32(out[20:], crc32.Checksum(body, castagnoli))
	binary.LittleEndian.PutUint32(out[24:], crc32.Checksum(out[:24], castagnoli))
	return append(out, body...)
}

// directoryFormat is the format d is written in: format 1 unless a host
// has a flag (see Formats).
func directoryFormat(d *Directory) uint16 {
	for _, h := range d.Hosts {
		if h.Drained {
			return dirFormat
		}
	}
	return dirFormat1
}

// DirectoryBodyLen checks a header and returns the length of the body that
// follows it. It returns ErrNoDirectory for an all-zero header.
func DirectoryBodyLen(header []byte) (int, error) {
	if len(header) < DirectoryHeaderLen {
		return 0, fmt.Errorf("%w: header of %d bytes", ErrBadDirectory, len(header))
	}
	h := header[:DirectoryHeaderLen]
	if bytes.Equal(h, make([]byte, DirectoryHeaderLen)) {
		return 0, ErrNoDirectory
	}
	if string(h[:4]) != dirMagic {
		return 0, fmt.Errorf("%w: bad magic %q", ErrBadDirectory, h[:4])
	}
	if crc32.Checksum(h[:24], castagnoli) != binary.LittleEndian.Uint32(h[24:]) {
		return 0, fmt.Errorf("%w: header checksum mismatch", ErrBadDirectory)
	}
	if binary.LittleEndian.Uint32(h[28:]) != 0 {
		return 0, fmt.Errorf("%w: reserved header bytes are not zero", ErrBadDirectory)
	}
	if f := binary.LittleEndian.Uint16(h[4:]); f != dirFormat1 && f != dirFormat {
		return 0, fmt.Errorf("%w: unknown format %d (this build knows %d to %d)", ErrBadDirectory, f, dirFormat1, dirFormat)
	}
	n := binary.LittleEndian.Uint32(h[16:])
	if n > DirectoryRegion-DirectoryHeaderLen {
		return 0, fmt.Errorf("%w: body of %d bytes exceeds the region", ErrBadDirectory, n)
	}
	return int(n), nil
}

// directoryVersion returns the version a valid header names.
func directoryVersion(header []byte) (uint64, error) {
	if _, err := DirectoryBodyLen(header); err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint64(header[8:]), nil
}

// DecodeDirectory decodes a region's bytes (header and at least the whole
// body). It returns ErrNoDirectory for an all-zero header.
func DecodeDirectory(b []byte) (*Directory, error) {
	n, err := DirectoryBodyLen(b)
	if err != nil {
		return nil, err
	}
	if len(b) < DirectoryHeaderLen+n {
		return nil, fmt.Errorf("%w: %d bytes of a %d-byte body", ErrBadDirectory, len(b)-DirectoryHeaderLen, n)
	}
	body := b[DirectoryHeaderLen : DirectoryHeaderLen+n]
	if crc32.Checksum(body, castagnoli) != binary.LittleEndian.Uint32(b[20:]) {
		return nil, fmt.Errorf("%w: body checksum mismatch", ErrBadDirectory)
	}
	d := &Directory{Version: binary.LittleEndian.Uint64(b[8:])}
	if err := decodeBody(body, binary.LittleEndian.Uint16(b[4:]), d); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadDirectory, err)
	}
	return d, nil
}

// appendBody: config (size, max item bytes, max items, replicas), then the
// hosts (count; id, address length, address, and in format 2 flags), then
// the memnodes (count; id, replica count, replicas, bootstrap count,
// bootstrap hosts); all uvarints.
func appendBody(b []byte, d *Directory) []byte {
	format := directoryFormat(d)
	u := binary.AppendUvarint
	b = u(b, d.Config.Size)
	b = u(b, uint64(d.Config.MaxItemBytes))
	b = u(b, uint64(d.Config.MaxItems))
	b = u(b, uint64(d.Config.Replicas))
	b = u(b, uint64(len(d.Hosts)))
	for _, h := range d.Hosts {
		b = u(b, h.ID)
		b = u(b, uint64(len(h.Addr)))
		b = append(b, h.Addr...)
		if format >= dirFormat {
			var flags uint64
			if h.Drained {
				flags |= hostDrained
			}
			b = u(b, flags)
		}
	}
	b = u(b, uint64(len(d.Memnodes)))
	for _, m := range d.Memnodes {
		b = u(b, m.ID)
		b = u(b, uint64(len(m.Replicas)))
		for _, r := range m.Replicas {
			b = u(b, r)
		}
		b = u(b, uint64(len(m.Bootstrap)))
		for _, r := range m.Bootstrap {
			b = u(b, r)
		}
	}
	return b
}

func decodeBody(b []byte, format uint16, d *Directory) error {
	var err error
	next := func() uint64 {
		if err != nil {
			return 0
		}
		v, n := binary.Uvarint(b)
		if n <= 0 {
			err = errors.New("truncated body")
			return 0
		}
		b = b[n:]
		return v
	}
	count := func() int {
		v := next()
		if v > uint64(len(b)) { // every element takes at least one byte
			err = fmt.Errorf("count %d exceeds the remaining %d bytes", v, len(b))
			return 0
		}
		return int(v)
	}
	d.Config.Size = next()
	d.Config.MaxItemBytes = uint32(next())
	d.Config.MaxItems = uint32(next())
	d.Config.Replicas = uint32(next())
	for range count() {
		h := DirectoryHost{ID: next()}
		n := count()
		if err != nil {
			return err
		}
		h.Addr = string(b[:n])
		b = b[n:]
		if format >= dirFormat {
			flags := next()
			if flags&^hostDrained != 0 && err == nil {
				return fmt.Errorf("host %d: unknown flags %#x", h.ID, flags)
			}
			h.Drained = flags&hostDrained != 0
		}
		d.Hosts = append(d.Hosts, h)
	}
	for range count() {
		m := DirectoryMemnode{ID: next()}
		for range count() {
			m.Replicas = append(m.Replicas, next())
		}
		for range count() {
			m.Bootstrap = append(m.Bootstrap, next())
		}
		d.Memnodes = append(d.Memnodes, m)
	}
	if err == nil && len(b) != 0 {
		err = fmt.Errorf("%d trailing bytes", len(b))
	}
	return err
}

// DirectoryItem is one write item of a directory update.
type DirectoryItem struct {
	Addr uint64
	Data []byte
}

// DirectoryWrites splits an encoded directory into write items of at most
// maxItemBytes bytes starting at DirectoryAddr.
func DirectoryWrites(enc []byte, maxItemBytes uint32) []DirectoryItem {
	if maxItemBytes == 0 {
		maxItemBytes = 1 << 20
	}
	var out []DirectoryItem
	for off := 0; off < len(enc); off += int(maxItemBytes) {
		end := min(len(enc), off+int(maxItemBytes))
		out = append(out, DirectoryItem{Addr: DirectoryAddr + uint64(off), Data: enc[off:end]})
	}
	return out
}

// --- administrative changes (pure: they only edit d) ---

func refuse(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrDirectoryChange, fmt.Sprintf(format, args...))
}

func (d *Directory) needHost(h uint64) error {
	if d.Host(h) == nil {
		ids := make([]uint64, 0, len(d.Hosts))
		for _, x := range d.Hosts {
			ids = append(ids, x.ID)
		}
		return refuse("host %d is not in the cluster (hosts: %v)", h, ids)
	}
	return nil
}

// needUndrained refuses host h as the place of a new replica: unknown, or
// drained.
func (d *Directory) needUndrained(h uint64) error {
	if err := d.needHost(h); err != nil {
		return err
	}
	if d.Host(h).Drained {
		return refuse("host %d is drained (being taken out of service): no replica may be added to it; undrain it first or pick another host", h)
	}
	return nil
}

func (d *Directory) needMemnode(mn uint64) (*DirectoryMemnode, error) {
	m := d.Memnode(mn)
	if m == nil {
		return nil, refuse("memnode %d does not exist", mn)
	}
	return m, nil
}

// Load counts the replicas each host holds.
func (d *Directory) Load() map[uint64]int {
	load := map[uint64]int{}
	for _, h := range d.Hosts {
		load[h.ID] = 0
	}
	for _, m := range d.Memnodes {
		for _, r := range m.Replicas {
			load[r]++
		}
	}
	return load
}

// PlaceMemnode picks the hosts for a new memnode placed by default: the
// Config.Replicas (3 if unset, at most the number of hosts) least-loaded
// hosts among those up says answer and that are not drained (ties to the
// lower id); nil up counts every host. A host that does not answer
// (stopped, decommissioned) or that an operator emptied holds no replica
// and so looks least loaded: picked, the first would leave the new group
// without a quorum, the second would undo the drain. Fewer such hosts than
// replicas is ErrTooFewHosts (drained hosts still count in "at most the
// number of hosts": draining one of three hosts does not quietly place
// memnodes on two).
func (d *Directory) PlaceMemnode(up map[uint64]bool) ([]uint64, error) {
	n := int(d.Config.Replicas)
	if n <= 0 {
		n = 3
	}
	n = min(n, len(d.Hosts))
	load := d.Load()
	var ids, down, drained []uint64
	for _, h := range d.Hosts {
		switch {
		case h.Drained:
			drained = append(drained, h.ID)
		case up == nil || up[h.ID]:
			ids = append(ids, h.ID)
		default:
			down = append(down, h.ID)
		}
	}
	if len(ids) < n || n == 0 {
		return nil, fmt.Errorf("%w: %d replicas wanted, %d of %d hosts answer and are not drained %v (not answering: %v, drained: %v); nothing changed (name the hosts to place it anyway)",
			ErrTooFewHosts, n, len(ids), len(d.Hosts), ids, down, drained)
	}
	sort.SliceStable(ids, func(i, j int) bool {
		if load[ids[i]] != load[ids[j]] {
			return load[ids[i]] < load[ids[j]]
		}
		return ids[i] < ids[j]
	})
	return ids[:n], nil
}

// AddMemnode adds a memnode with the next free id, on replicas or, if
// replicas is empty, on the hosts PlaceMemnode(nil) picks (every host
// counted as answering: Client.AddMemnode checks which do). Drained hosts
// are refused. It returns the new memnode's id.
func (d *Directory) AddMemnode(replicas []uint64) (uint64, error) {
	if len(replicas) == 0 {
		var err error
		if replicas, err = d.PlaceMemnode(nil); err != nil {
			return 0, err
		}
	}
	if len(replicas) == 0 {
		return 0, refuse("a memnode needs at least one replica")
	}
	seen := map[uint64]bool{}
	for _, r := range replicas {
		if err := d.needUndrained(r); err != nil {
			return 0, err
		}
		if seen[r] {
			return 0, refuse("host %d listed twice", r)
		}
		seen[r] = true
	}
	var id uint64
	for _, m := range d.Memnodes {
		id = max(id, m.ID+1)
	}
	reps := slices.Clone(replicas)
	slices.Sort(reps)
	d.Memnodes = append(d.Memnodes, DirectoryMemnode{ID: id, Replicas: reps, Bootstrap: slices.Clone(reps)})
	return id, nil
}

// AddReplica places a new replica of memnode mn on host, which must not be
// drained.
func (d *Directory) AddReplica(mn, host uint64) error {
	m, err := d.needMemnode(mn)
	if err != nil {
		return err
	}
	if err := d.needUndrained(host); err != nil {
		return err
	}
	if slices.Contains(m.Replicas, host) {
		return refuse("memnode %d already has a replica on host %d", mn, host)
	}
	m.Replicas = append(m.Replicas, host)
	slices.Sort(m.Replicas)
	return nil
}

// RemoveReplica removes memnode mn's replica on host; the last replica
// cannot be removed.
func (d *Directory) RemoveReplica(mn, host uint64) error {
	m, err := d.needMemnode(mn)
	if err != nil {
		return err
	}
	if err := d.needHost(host); err != nil {
		return err
	}
	i := slices.Index(m.Replicas, host)
	if i < 0 {
		return refuse("memnode %d has no replica on host %d (replicas: %v)", mn, host, m.Replicas)
	}
	if len(m.Replicas) == 1 {
		return refuse("host %d holds the last replica of memnode %d; add another one first", host, mn)
	}
	m.Replicas = slices.Delete(m.Replicas, i, i+1)
	return nil
}

// MoveReplica moves memnode mn's replica from one host to another, which
// must not be drained. The hosts add the new replica (it catches up) before
// they remove the old one.
func (d *Directory) MoveReplica(mn, from, to uint64) error {
	m, err := d.needMemnode(mn)
	if err != nil {
		return err
	}
	for _, h := range []uint64{from, to} {
		if err := d.needHost(h); err != nil {
			return err
		}
	}
	if from == to {
		return refuse("moving memnode %d's replica from host %d to itself", mn, from)
	}
	if !slices.Contains(m.Replicas, from) {
		return refuse("memnode %d has no replica on host %d (replicas: %v)", mn, from, m.Replicas)
	}
	if slices.Contains(m.Replicas, to) {
		return refuse("memnode %d already has a replica on host %d", mn, to)
	}
	if err := d.AddReplica(mn, to); err != nil {
		return err
	}
	return d.RemoveReplica(mn, from)
}

// HostMemnodes lists the memnodes with a replica on host, in id order.
func (d *Directory) HostMemnodes(host uint64) []uint64 {
	var out []uint64
	for _, m := range d.Memnodes {
		if slices.Contains(m.Replicas, host) {
			out = append(out, m.ID)
		}
	}
	return out
}

// MoveTarget picks where memnode mn's replica on host from goes when from
// is drained: the least-loaded host (ties to the lower id) that up says
// answers (nil up counts every host), is not drained and holds no replica
// of mn yet. None is ErrTooFewHosts.
func (d *Directory) MoveTarget(mn, from uint64, up map[uint64]bool) (uint64, error) {
	m, err := d.needMemnode(mn)
	if err != nil {
		return 0, err
	}
	if !slices.Contains(m.Replicas, from) {
		return 0, refuse("memnode %d has no replica on host %d (replicas: %v)", mn, from, m.Replicas)
	}
	load := d.Load()
	var best uint64
	found := false
	var down, drained []uint64
	for _, h := range d.Hosts {
		switch {
		case slices.Contains(m.Replicas, h.ID):
		case h.Drained:
			drained = append(drained, h.ID)
		case up != nil && !up[h.ID]:
			down = append(down, h.ID)
		case !found || load[h.ID] < load[best] || load[h.ID] == load[best] && h.ID < best:
			best, found = h.ID, true
		}
	}
	if !found {
		return 0, fmt.Errorf("%w: no host to move memnode %d's replica on host %d to: its replicas are on %v, drained: %v, not answering: %v; nothing changed",
			ErrTooFewHosts, mn, from, m.Replicas, drained, down)
	}
	return best, nil
}

// DrainHost marks host drained: no new replica goes on it (PlaceMemnode,
// AddMemnode, AddReplica and MoveReplica refuse it). Its replicas stay
// until moved (MoveTarget says where). Draining a drained host changes
// nothing.
func (d *Directory) DrainHost(host uint64) error {
	if err := d.needHost(host); err != nil {
		return err
	}
	d.Host(host).Drained = true
	return nil
}

// UndrainHost puts a drained host back in service. Undraining a host that
// is not drained changes nothing.
func (d *Directory) UndrainHost(host uint64) error {
	if err := d.needHost(host); err != nil {
		return err
	}
	d.Host(host).Drained = false
	return nil
}

// RemoveHost takes host out of the directory. Only a drained host that
// holds no replica, and is not an initial voter of a memnode still being
// created (Bootstrap), can go; the refusal names what is left. The host's
// process must be stopped (Client.RemoveHost checks it does not answer):
// a running host registers itself in the directory when it is absent (see
// memnode/service, "Taking a host out of service").
func (d *Directory) RemoveHost(host uint64) error {
	if err := d.needHost(host); err != nil {
		return err
	}
	var why []string
	if !d.Host(host).Drained {
		why = append(why, "it is not drained (drain it first)")
	}
	if held := d.HostMemnodes(host); len(held) > 0 {
		why = append(why, fmt.Sprintf("it still holds replicas of memnodes %v (move them away first)", held))
	}
	for _, m := range d.Memnodes {
		if slices.Contains(m.Bootstrap, host) {
			why = append(why, fmt.Sprintf("it is an initial voter of memnode %d, whose group is still being created (wait until it has a leader)", m.ID))
		}
	}
	if len(why) > 0 {
		return refuse("host %d cannot be removed: %s", host, strings.Join(why, "; "))
	}
	d.Hosts = slices.DeleteFunc(d.Hosts, func(h DirectoryHost) bool { return h.ID == host })
	return nil
}
