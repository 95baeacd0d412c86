#include "cpu/thread_pool.h"

#include <dlfcn.h>
#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace bigperf::cpu {
namespace {

class ThreadPool {
 public:
  // Runs tasks 1..count-1 on workers and task 0 on the caller.
  void run(int count, const std::function<void(int)>& task) {
    std::lock_guard<std::mutex> call_guard(call_mutex_);  // one parallel region at a time
    ensure_workers(count - 1);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      task_ = &task;
      next_index_ = 1;
      task_count_ = count;
      pending_ = count - 1;
      error_ = nullptr;
      ++generation_;
    }
    wake_.notify_all();
    run_one(task, 0);
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, [this] { return pending_ == 0; });
    task_ = nullptr;
    if (error_) std::rethrow_exception(error_);
  }

  // Held across fork() by the fork handlers, so that no parallel region is half-way
  // through when the process is copied.
  std::mutex& call_mutex() { return call_mutex_; }

  ~ThreadPool() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
    }
    wake_.notify_all();
    for (auto& t : workers_) t.join();
  }

 private:
  void ensure_workers(int wanted) {
    while (static_cast<int>(workers_.size()) < wanted)
      workers_.emplace_back([this] { worker_loop(); });
  }

  void run_one(const std::function<void(int)>& task, int index) {
    try {
      task(index);
    } catch (...) {
      std::lock_guard<std::mutex> lock(mutex_);
      if (!error_) error_ = std::current_exception();
    }
  }

  void worker_loop() {
    uint64_t seen = 0;
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
      wake_.wait(lock, [&] { return stopping_ || (generation_ != seen && next_index_ < task_count_); });
      if (stopping_) return;
      const int index = next_index_++;
      if (next_index_ >= task_count_) seen = generation_;
      const auto* task = task_;
      lock.unlock();
      run_one(*task, index);
      lock.lock();
      if (--pending_ == 0) done_.notify_one();
    }
  }

  std::mutex call_mutex_;
  std::mutex mutex_;
  std::condition_variable wake_, done_;
  std::vector<std::thread> workers_;
  const std::function<void(int)>* task_ = nullptr;
  int next_index_ = 0, task_count_ = 0, pending_ = 0;
  uint64_t generation_ = 0;
  bool stopping_ = false;
  std::exception_ptr error_;
};

// The pool, created on first use. Leaked on purpose: joining threads during interpreter
// shutdown can deadlock. After a fork the child's copy has workers that do not exist (only
// the forking thread is copied), so the child drops it and makes a fresh one (fork handlers
// below). Guarded by pool_mutex.
std::mutex pool_mutex;
ThreadPool* current_pool = nullptr;

ThreadPool& pool() {
  std::lock_guard<std::mutex> lock(pool_mutex);
  if (!current_pool) current_pool = new ThreadPool();
  return *current_pool;
}

// ----------------------------------------------------------------------------- OpenMP

// libgomp's entry for `#pragma omp parallel num_threads(n)`: runs fn(data) on a team of
// up to n threads, the caller included, and returns when all are done. A stable ABI
// that libgomp and LLVM's/Intel's runtimes (libomp, libiomp5) all export.
using GompParallel = void (*)(void (*fn)(void*), void* data, unsigned num_threads, unsigned flags);

std::atomic<GompParallel> gomp_parallel{nullptr};
std::mutex runtime_mutex;
std::string adopted_path;  // guarded by runtime_mutex

// One parallel region's chunks, taken from a counter by whichever team threads run:
// the runtime may give fewer threads than asked (nested regions, thread limits).
struct Region {
  const std::function<void(int)>* task;
  int count;
  std::atomic<int> next{0};
  std::mutex error_mutex;
  std::exception_ptr error;
};

void run_region_chunks(void* data) {
  auto* region = static_cast<Region*>(data);
  for (int i; (i = region->next.fetch_add(1, std::memory_order_relaxed)) < region->count;) {
    try {
      (*region->task)(i);
    } catch (...) {  // nothing may unwind through the OpenMP runtime
      std::lock_guard<std::mutex> lock(region->error_mutex);
      if (!region->error) region->error = std::current_exception();
    }
  }
}

void run_parallel(int count, const std::function<void(int)>& task) {
  if (const GompParallel parallel = gomp_parallel.load(std::memory_order_acquire)) {
    Region region;
    region.task = &task;
    region.count = count;
    parallel(run_region_chunks, &region, static_cast<unsigned>(count), 0);
    if (region.error) std::rethrow_exception(region.error);
    return;
  }
  pool().run(count, task);
}

// ----------------------------------------------------------------------------- fork

// fork() copies only the calling thread. Before it, wait for a running region of our pool
// and take the locks a child would need; after it, the parent releases them, and the child
// starts from a fresh pool. The child also leaves the adopted OpenMP runtime: GNU libgomp's
// team threads are gone in a child too, and its first parallel region waits for them
// forever (seen with torch's libgomp: its own ops hang in such a child as well); our pool
// runs the child's regions instead.
void before_fork() {
  runtime_mutex.lock();
  pool_mutex.lock();
  if (current_pool) current_pool->call_mutex().lock();
}

void after_fork_in_parent() {
  if (current_pool) current_pool->call_mutex().unlock();
  pool_mutex.unlock();
  runtime_mutex.unlock();
}

void after_fork_in_child() {
  current_pool = nullptr;  // the old pool (its mutex still held) is leaked, never touched
  gomp_parallel.store(nullptr, std::memory_order_release);
  adopted_path.clear();
  pool_mutex.unlock();
  runtime_mutex.unlock();
}

[[maybe_unused]] const bool fork_handlers_registered = pthread_atfork(before_fork, after_fork_in_parent, after_fork_in_child) == 0;

}  // namespace

void parallel_for(int64_t n, int num_threads, int64_t grain,
                  const std::function<void(int64_t, int64_t)>& body) {
  if (n <= 0) return;
  grain = std::max<int64_t>(grain, 1);
  const int64_t grains = (n + grain - 1) / grain;
  const int chunks = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(num_threads, grains)));
  if (chunks == 1) {
    body(0, n);
    return;
  }
  // Balanced split in whole grains.
  run_parallel(chunks, [&](int chunk) {
    const int64_t g_begin = grains * chunk / chunks;
    const int64_t g_end = grains * (chunk + 1) / chunks;
    const int64_t begin = g_begin * grain;
    const int64_t end = std::min(n, g_end * grain);
    if (begin < end) body(begin, end);
  });
}

bool adopt_openmp_runtime(const std::string& path) {
  // RTLD_NOLOAD: a handle only if this very file is already mapped; never a second runtime.
  void* handle = dlopen(path.c_str(), RTLD_LAZY | RTLD_NOLOAD);
  if (!handle) return false;
  auto parallel = reinterpret_cast<GompParallel>(dlsym(handle, "GOMP_parallel"));
  if (!parallel) {
    dlclose(handle);
    return false;
  }
  std::lock_guard<std::mutex> lock(runtime_mutex);
  adopted_path = path;  // the handle stays open: the runtime must outlive every region
  gomp_parallel.store(parallel, std::memory_order_release);
  return true;
}

void use_own_threads() {
  std::lock_guard<std::mutex> lock(runtime_mutex);
  adopted_path.clear();
  gomp_parallel.store(nullptr, std::memory_order_release);
}

std::string thread_runtime() {
  std::lock_guard<std::mutex> lock(runtime_mutex);
  return gomp_parallel.load() ? adopted_path : std::string("own");
}

}  // namespace bigperf::cpu
