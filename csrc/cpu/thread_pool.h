// Where the CPU kernels' parallel regions run. Preferred: the OpenMP runtime torch has
// already loaded, adopted at import (bigperf._ext): torch's worker threads spin-wait
// after each of its ops, and with a pool of our own they took the cores from the next
// bigperf kernel (measured: an M = 1 int8 call of 3.8 ms took ~8 ms right after a torch
// op); on torch's runtime those same spinning threads run our chunks. Linking an OpenMP
// runtime of our own is no option: a second runtime beside torch's oversubscribes cores
// and can hang (DESIGN.md). Fallback: a small persistent thread pool of our own. The
// caller passes torch.get_num_threads(); the calling thread always takes a chunk.
#pragma once
#include <cstdint>
#include <functional>
#include <string>

namespace bigperf::cpu {

// Runs body(begin, end) over [0, n) split into at most num_threads contiguous chunks
// whose boundaries are multiples of `grain` (except the last). Blocks until all finish;
// the first exception thrown by any chunk is rethrown here.
void parallel_for(int64_t n, int num_threads, int64_t grain,
                  const std::function<void(int64_t, int64_t)>& body);

// Runs parallel regions on the OpenMP runtime mapped from `path`, which must already be
// loaded in this process (it is never loaded here) and export GOMP_parallel; otherwise
// returns false and changes nothing.
bool adopt_openmp_runtime(const std::string& path);

// Back to the pool of our own threads.
void use_own_threads();

// "own", or the path of the adopted OpenMP runtime.
std::string thread_runtime();

}  // namespace bigperf::cpu
