// Package bufpool is the gRPC buffer pool and protobuf codec of tutti's
// servers and clients. gRPC's default pool (mem.DefaultBufferPool) zeroes
// every buffer it hands out, over the buffer's whole capacity, and its
// tiers jump from 32 KiB to 1 MiB, so a 40 KiB message cost a 1 MiB clear
// before gRPC read or marshalled into it; its protobuf codec takes its
// buffers from that pool too. gRPC and the codec write every byte of the
// length they ask for before anyone reads it, so the zeroing bought
// nothing. Pool hands out buffers with a power-of-two capacity from 256 B
// to 4 MiB (the largest request tutti sends) without zeroing them; larger
// ones are plain allocations. Tiers of 256 KiB and up keep a few buffers
// that garbage collections do not take (bufpool.go, keptPerTier). Codec
// is gRPC's codec on Pool.
//
// At saturation of `tutti bench mcast` (embedded cluster, 3 member
// processes, 1 KiB messages) the clears were 5% of the cluster's CPU
// profile. Alternated 8 s runs, before and after: 49.2k, 49.8k, 51.1k
// against 51.4k, 54.6k, 56.2k delivered/s per member, 36.5, 36.2, 34.7
// against 35.2, 33.0, 31.6 µs of CPU (cluster and members) per delivered
// message. `tutti bench mtx` (small requests, under the pooling threshold
// of the codec) showed no difference outside its noise.
//
// It owns only buffers and their encoding: it must not import tutti's
// other packages, and the buffers it hands out must never be read before
// their user wrote them (gRPC and the codec write every byte they ask for).
package bufpool
