// All-reduce among processes on one host through a shared memory segment: the row-wise
// sums of CPU tensor parallelism (bigperf/distributed/shm.py). gloo's all-reduce of one
// decode row costs ~1.5 ms between two processes on one host (measured: 2048 fp32, 2
// ranks of 1 thread on a Zen 3); this costs a copy, a barrier on cache lines and a sum.
//
// Segment (zero-filled by its creator): kHeader bytes of counters, one 64-byte line per
// rank, then two banks of `world` slots of `capacity` bytes. Call s (1, 2, ...) of every
// rank: copy the rank's data into slot [s % 2][rank], publish s in its counter (release),
// wait until every counter reads >= s (acquire), then reduce the slots in rank order (the
// same order, so every rank gets the same bits). Two banks make one barrier per call
// enough: a rank writes bank s % 2 again at call s + 2 only after every rank has passed
// the barrier of call s + 1, that is, after every rank finished reading call s.
#pragma once
#include <cstdint>

namespace bigperf::cpu {

constexpr int64_t kShmLine = 64;
constexpr int kShmMaxRanks = 64;
constexpr int64_t kShmHeader = kShmLine * kShmMaxRanks;

enum class ShmReduceOp { sum = 0, max = 1 };

// Bytes of a segment for `world` ranks of `capacity` bytes each.
inline int64_t shm_segment_bytes(int world, int64_t capacity) { return kShmHeader + 2 * world * capacity; }

// data: `numel` fp32 values (numel * 4 <= capacity), reduced in place. seq: this call's
// number, 1 for the first call on the segment, then +1 per call on every rank. Waits at
// most timeout_s seconds for the other ranks; returns false on timeout (data unchanged).
// max propagates NaN.
bool shm_all_reduce_f32(void* segment, int64_t capacity, int rank, int world, float* data, int64_t numel,
                        ShmReduceOp op, uint64_t seq, double timeout_s);

}  // namespace bigperf::cpu
