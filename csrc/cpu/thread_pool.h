// A small persistent thread pool of our own. Why not OpenMP: a second OpenMP runtime
// beside the one torch ships oversubscribes cores and can hang (DESIGN.md). The caller
// passes torch.get_num_threads(); the calling thread always takes the first chunk.
#pragma once
#include <cstdint>
#include <functional>

namespace bigperf::cpu {

// Runs body(begin, end) over [0, n) split into at most num_threads contiguous chunks
// whose boundaries are multiples of `grain` (except the last). Blocks until all finish;
// the first exception thrown by any chunk is rethrown here.
void parallel_for(int64_t n, int num_threads, int64_t grain,
                  const std::function<void(int64_t, int64_t)>& body);

}  // namespace bigperf::cpu
