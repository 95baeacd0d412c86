#include "cpu/thread_pool.h"

#include <algorithm>
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

ThreadPool& pool() {
  // Leaked on purpose: joining threads during interpreter shutdown can deadlock.
  static ThreadPool* instance = new ThreadPool();
  return *instance;
}

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
  pool().run(chunks, [&](int chunk) {
    const int64_t g_begin = grains * chunk / chunks;
    const int64_t g_end = grains * (chunk + 1) / chunks;
    const int64_t begin = g_begin * grain;
    const int64_t end = std::min(n, g_end * grain);
    if (begin < end) body(begin, end);
  });
}

}  // namespace bigperf::cpu
