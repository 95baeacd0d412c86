// Where the CPU kernels' parallel regions run. Preferred: the OpenMP runtime torch has
// already loaded, adopted at import (bigperf._ext): torch's worker threads spin-wait
// after each of its ops, and with a pool of our own they took the cores from the next
// bigperf kernel (measured: an M = 1 int8 call of 3.8 ms took ~8 ms right after a torch
// op); on torch's runtime those same spinning threads run our chunks. Linking an OpenMP
// runtime of our own is no option: a second runtime beside torch's oversubscribes cores
// and can hang (docs/ARCHITECTURE.md). Fallback: a small persistent thread pool of our own. The
// caller passes torch.get_num_threads(); the calling thread always takes a chunk.
#pragma once
#include <atomic>
#include <cstdint>
#include <functional>
#include <string>
#include <thread>

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

// (Anonymous namespace: kernel units built with different ISA flags include this, and their
// instantiations must never be merged by the linker; see vec_avx2.h.)
namespace {

inline void spin_pause() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#else
  std::this_thread::yield();
#endif
}

// Items handed out from a shared counter: each of up to num_threads workers runs
// worker(take), take() giving the next item index (>= items when none is left). Why not
// parallel_for's fixed shares: on a shared machine a core is often busy with another
// process for milliseconds, and a fixed split then waits for the slow share (measured: M = 1
// int8 calls of 3.6 ms stretched to 6-8 ms); and the caller works while the others wake.
// At the end the caller (worker 0) spins until the others have left their work, bounded
// (~100-200 us, then it waits in the runtime as before). Measured with 2 threads, 16 items
// of 400 us in all (p50): own pool 461 -> 434 us, torch's OpenMP under OMP_WAIT_POLICY=PASSIVE
// 461 -> 441 us, torch's OpenMP by default 402 -> 403 us (benchmarks/NOTES.md).
template <class Worker>
void parallel_dynamic(int64_t items, int num_threads, const Worker& worker) {
  if (items <= 0) return;
  const int workers = static_cast<int>(items < num_threads ? items : num_threads);
  std::atomic<int64_t> next{0};
  auto take = [&next] { return next.fetch_add(1, std::memory_order_relaxed); };
  if (workers <= 1) {
    worker(take);
    return;
  }
  std::atomic<int> left{0};
  parallel_for(workers, workers, 1, [&](int64_t index, int64_t) {
    worker(take);
    if (index != 0) {  // (chunk 0 is the caller's thread)
      left.fetch_add(1, std::memory_order_release);
      return;
    }
    for (int polls = 0; polls < 4096 && left.load(std::memory_order_acquire) < workers - 1; ++polls) spin_pause();
    // A worker has a few instructions left before it reports to the runtime: without this
    // short wait the caller often got there first and slept (own pool: p90 144 -> 129 us).
    for (int k = 0; k < 64; ++k) spin_pause();
  });
}

// body(item) for every item in [0, items), on parallel_dynamic.
template <class Body>
void parallel_items(int64_t items, int num_threads, const Body& body) {
  parallel_dynamic(items, num_threads, [&](auto take) {
    for (int64_t i; (i = take()) < items;) body(i);
  });
}

}  // namespace

}  // namespace bigperf::cpu
