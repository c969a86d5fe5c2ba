package memnode

// ReadAt copies the bytes at [addr, addr+len(dst)) into dst, whatever locks
// in-doubt transactions hold: the memory as the applied entries left it.
// Unwritten bytes read as zeros. The range must lie within the address
// space (Config.Size). It lets an observer of the apply path (the watch
// streams of memnode/service) report the bytes that entries wrote; like
// every method it must not run concurrently with Apply.
func (m *Memnode) ReadAt(dst []byte, addr uint64) {
	clear(dst)
	m.mem.readInto(dst, addr)
}
