// A Perfetto SDK app (system backend) that emits track_event slices for a
// given time: the real-client check of tracebus's Perfetto producer socket.
//
//   producer_app SECONDS [INTERVAL_US]
//
// Connects to $PERFETTO_PRODUCER_SOCK_NAME (the SDK's convention), registers
// the track_event data source (categories "app" and "app.debug"), waits up to
// 60 s for a session to enable it, then emits one slice "work" every
// INTERVAL_US microseconds (default 500) for SECONDS seconds. Each slice
// carries debug annotations pid (this process) and i (its index), so a trace
// tells this process's slices apart from another's. Then it flushes, waits up
// to 60 s for the session to stop (so the service sees the stop acked) and
// prints one line: "producer_app pid=P emitted=N" (N: slices emitted while
// tracing was enabled: each is two packets, begin and end).

#include <perfetto.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <thread>

PERFETTO_DEFINE_CATEGORIES(
    perfetto::Category("app").SetDescription("producer_app's slices"),
    perfetto::Category("app.debug").SetTags("debug").SetDescription("unused"));

PERFETTO_TRACK_EVENT_STATIC_STORAGE();

namespace {

// Tells the main thread when the track_event data source starts and stops.
class SessionWatch : public perfetto::TrackEventSessionObserver {
 public:
  SessionWatch() { perfetto::TrackEvent::AddSessionObserver(this); }
  ~SessionWatch() override { perfetto::TrackEvent::RemoveSessionObserver(this); }

  void OnStart(const perfetto::DataSourceBase::StartArgs&) override {
    std::lock_guard<std::mutex> lock(mutex_);
    started_ = true;
    cv_.notify_all();
  }
  void OnStop(const perfetto::DataSourceBase::StopArgs&) override {
    std::lock_guard<std::mutex> lock(mutex_);
    stopped_ = true;
    cv_.notify_all();
  }
  bool WaitStarted(std::chrono::seconds timeout) {
    std::unique_lock<std::mutex> lock(mutex_);
    return cv_.wait_for(lock, timeout, [this] { return started_; });
  }
  bool WaitStopped(std::chrono::seconds timeout) {
    std::unique_lock<std::mutex> lock(mutex_);
    return cv_.wait_for(lock, timeout, [this] { return stopped_; });
  }

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  bool started_ = false;
  bool stopped_ = false;
};

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s SECONDS [INTERVAL_US]\n", argv[0]);
    return 2;
  }
  const double seconds = std::atof(argv[1]);
  const long interval_us = argc > 2 ? std::atol(argv[2]) : 500;
  const int pid = static_cast<int>(getpid());

  perfetto::TracingInitArgs args;
  args.backends = perfetto::kSystemBackend;
  perfetto::Tracing::Initialize(args);
  perfetto::TrackEvent::Register();

  SessionWatch watch;
  if (!watch.WaitStarted(std::chrono::seconds(60))) {
    std::fprintf(stderr, "producer_app pid=%d: no session started track_event\n", pid);
    return 1;
  }

  long emitted = 0;
  const auto end = std::chrono::steady_clock::now() +
                   std::chrono::microseconds(static_cast<long>(seconds * 1e6));
  for (long i = 0; std::chrono::steady_clock::now() < end; i++) {
    if (TRACE_EVENT_CATEGORY_ENABLED("app")) {
      TRACE_EVENT("app", "work", "pid", pid, "i", i);
      emitted++;
    }
    std::this_thread::sleep_for(std::chrono::microseconds(interval_us));
  }
  // Commits this thread's last chunk (else it waits for the service's scraping).
  perfetto::TrackEvent::Flush();

  const bool stopped = watch.WaitStopped(std::chrono::seconds(60));
  std::printf("producer_app pid=%d emitted=%ld%s\n", pid, emitted,
              stopped ? "" : " (the session did not stop within 60 s)");
  std::fflush(stdout);
  return 0;
}
