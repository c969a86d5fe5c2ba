package replication

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"

	"github.com/cockroachdb/pebble/v2/vfs"
	"golang.org/x/sys/unix"
)

// directFS writes the log engine's tables and the snapshot files with
// O_DIRECT, past the page cache; everything else (WAL, manifest, reads of
// tables and snapshots) goes through fs (the OS's) unchanged.
//
// Why: nearly all the engine writes is Raft log, and every byte of it is
// written twice, once to the WAL and once into a table when its memtable
// is flushed (the log is truncated only after the next snapshot, so tables
// are mostly deleted whole later, never read). Written through the page
// cache, a table's bytes cost a copy into pages the kernel must first
// allocate; on the VMs this project is measured on those pages come back
// from the host on first touch (the guest returns idle and free memory to
// it), and the copy cost ~4 ns per byte: the flushes' write calls were
// 30% of the embedded cluster's CPU at multicast saturation. O_DIRECT
// hands the device our own buffer (reused, so warm): ~0.25 ns per byte.
// doc.go, "Tables written past the page cache", has the figures.
//
// Snapshot files, likewise written once and read back only by a restart
// or a follower's catch-up, cost 4.1% of the cluster's CPU in write calls
// at saturation through the page cache (a snapshot of a memnode copies
// its whole address space, every 256 MiB of log or twice its size).
//
// A table is written sequentially (Pebble's table writer only calls Write,
// then Sync and Close; so does writeSnapFile): bytes gather in an aligned buffer written whole
// (aligned offset and length, as O_DIRECT requires); Sync writes the last
// partial block padded with zeros, cuts the file to the bytes written
// (ftruncate) and fsyncs, so the file holds exactly what Pebble wrote, and
// its size is durable with its data. Reads of the table open it again
// without O_DIRECT. Where the file system refuses O_DIRECT (tmpfs), tables
// are written as before.
type directFS struct {
	vfs.FS
	bufs    sync.Pool     // *directBuf
	written atomic.Uint64 // files written with O_DIRECT (tests)
}

// directBlock is the alignment O_DIRECT needs for offsets, lengths and
// buffer addresses: the logical block size of every device seen, and of
// the page size.
const directBlock = 4096

// directBufSize: how much a table writer gathers per write call.
const directBufSize = 1 << 20

// directBuf is an aligned window of directBufSize bytes (of an allocation
// one block larger, which b keeps alive).
type directBuf struct{ b []byte }

func newDirectFS(fs vfs.FS) *directFS {
	d := &directFS{FS: fs}
	d.bufs.New = func() any { return &directBuf{b: alignedBlock(directBufSize)} }
	return d
}

// Create opens a table, or a snapshot file being written (snapTmpSuffix),
// for writing with O_DIRECT; other files, and these where O_DIRECT is
// refused, as fs does.
func (d *directFS) Create(name string, category vfs.DiskWriteCategory) (vfs.File, error) {
	if !strings.HasSuffix(name, ".sst") && !strings.HasSuffix(name, snapTmpSuffix) {
		return d.FS.Create(name, category)
	}
	// As FS.Create: a new inode even if the name exists.
	if err := os.Remove(name); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE|os.O_EXCL|syscall.O_CLOEXEC|syscall.O_DIRECT, 0o666)
	if errors.Is(err, syscall.EINVAL) {
		return d.FS.Create(name, category)
	}
	if err != nil {
		return nil, err
	}
	d.written.Add(1)
	buf := d.bufs.Get().(*directBuf)
	return &directFile{fs: d, f: f, fd: int(f.Fd()), buf: buf}, nil
}

// directFile is a table being written with O_DIRECT. buf[:n] holds the
// bytes at off..off+n not yet written whole (off is block aligned).
type directFile struct {
	fs  *directFS
	f   *os.File
	fd  int
	buf *directBuf
	n   int
	off int64
	// cut: the file's length is off+n (the partial block written and the
	// file cut since the last Write).
	cut bool
	err error // a failed write: every later call fails
}

func (f *directFile) Write(p []byte) (int, error) {
	if f.err != nil || f.buf == nil {
		if f.err == nil {
			return 0, os.ErrClosed
		}
		return 0, f.err
	}
	written := 0
	for len(p) > 0 {
		c := copy(f.buf.b[f.n:], p)
		f.n += c
		p = p[c:]
		written += c
		f.cut = false
		if f.n == len(f.buf.b) {
			if err := f.pwrite(f.buf.b); err != nil {
				return written, err
			}
			f.off += int64(f.n)
			f.n = 0
		}
	}
	return written, nil
}

func (f *directFile) pwrite(b []byte) error {
	if err := pwriteAll(f.fd, b, f.off); err != nil {
		f.err = fmt.Errorf("replication: write %s: %w", f.f.Name(), err)
		return f.err
	}
	return nil
}

// flush writes the partial block (padded with zeros: O_DIRECT writes whole
// blocks) and cuts the file to the bytes written. The partial block stays
// in buf, so a later Write continues it.
func (f *directFile) flush() error {
	if f.err != nil {
		return f.err
	}
	if f.cut {
		return nil
	}
	if f.n > 0 {
		padded := (f.n + directBlock - 1) &^ (directBlock - 1)
		clear(f.buf.b[f.n:padded])
		if err := f.pwrite(f.buf.b[:padded]); err != nil {
			return err
		}
	}
	if err := unix.Ftruncate(f.fd, f.off+int64(f.n)); err != nil {
		f.err = fmt.Errorf("replication: cut %s: %w", f.f.Name(), err)
		return f.err
	}
	f.cut = true
	return nil
}

// Sync makes the table's bytes and its length durable.
func (f *directFile) Sync() error {
	if err := f.flush(); err != nil {
		return err
	}
	return f.f.Sync()
}

// SyncData is Sync: the file's length is part of what must be durable.
func (f *directFile) SyncData() error { return f.Sync() }

// SyncTo: what is written with O_DIRECT is not in the page cache, so
// there is nothing to start writing back early; Sync persists.
func (f *directFile) SyncTo(int64) (bool, error) { return false, f.err }

func (f *directFile) Close() error {
	if f.buf == nil {
		return errors.New("replication: table closed twice")
	}
	err := f.flush()
	if cerr := f.f.Close(); err == nil {
		err = cerr
	}
	if f.buf != nil {
		f.fs.bufs.Put(f.buf)
		f.buf = nil
	}
	return err
}

func (f *directFile) Stat() (vfs.FileInfo, error) {
	if err := f.flush(); err != nil {
		return nil, err
	}
	return f.fs.FS.Stat(f.f.Name())
}

func (f *directFile) Preallocate(offset, length int64) error {
	// As Pebble's own files: keep the size, ignore file systems without it.
	err := unix.Fallocate(f.fd, unix.FALLOC_FL_KEEP_SIZE, offset, length)
	if err == unix.EOPNOTSUPP || err == unix.ENOSYS {
		return nil
	}
	return err
}

var errDirectRead = errors.New("replication: a table being written is not read through its writer")

func (f *directFile) Read([]byte) (int, error)          { return 0, errDirectRead }
func (f *directFile) ReadAt([]byte, int64) (int, error) { return 0, errDirectRead }
func (f *directFile) WriteAt([]byte, int64) (int, error) {
	return 0, errors.New("replication: tables are written sequentially")
}
func (f *directFile) Prefetch(offset, length int64) error { return nil }
func (f *directFile) Fd() uintptr                         { return vfs.InvalidFd }

// alignedBlock returns n bytes aligned for O_DIRECT.
func alignedBlock(n int) []byte {
	mem := make([]byte, n+directBlock)
	off := 0
	if rem := int(uintptr(unsafe.Pointer(&mem[0])) % directBlock); rem != 0 {
		off = directBlock - rem
	}
	return mem[off : off+n]
}

func pwriteAll(fd int, b []byte, off int64) error {
	for w := 0; w < len(b); {
		n, err := unix.Pwrite(fd, b[w:], off+int64(w))
		if err == unix.EINTR {
			continue
		}
		if err == nil && n == 0 {
			err = errors.New("short write")
		}
		if err != nil {
			return err
		}
		w += n
	}
	return nil
}
