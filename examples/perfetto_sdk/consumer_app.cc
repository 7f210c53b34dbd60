// A Perfetto SDK consumer (system backend) that records one trace: the
// real-client check of tracebus's Perfetto consumer socket.
//
//   consumer_app SECONDS OUTFILE [BUFFER_KB]
//
// Connects to $PERFETTO_CONSUMER_SOCK_NAME, sets up a session with one ring
// buffer of BUFFER_KB (default 16384) and the track_event data source (all
// categories), StartBlocking, waits SECONDS, StopBlocking, ReadTraceBlocking
// and writes the trace (a perfetto.protos.Trace) to OUTFILE, and the session's
// TraceStats (serialized perfetto.protos.TraceStats) to OUTFILE.stats. Prints
// "consumer_app packets=N bytes=B stats_ok=0|1".

#include <perfetto.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <thread>
#include <vector>

namespace {

// Reads a base-128 varint at `*pos`; false if it runs past `end`.
bool ReadVarint(const std::vector<char>& buf, size_t* pos, uint64_t* value) {
  *value = 0;
  for (int shift = 0; shift < 64 && *pos < buf.size(); shift += 7) {
    const auto byte = static_cast<uint8_t>(buf[(*pos)++]);
    *value |= static_cast<uint64_t>(byte & 0x7f) << shift;
    if (!(byte & 0x80))
      return true;
  }
  return false;
}

// The number of TracePackets (field 1, length-delimited) in a Trace; -1 if the
// bytes are not a well-formed sequence of them.
long CountPackets(const std::vector<char>& trace) {
  long packets = 0;
  size_t pos = 0;
  while (pos < trace.size()) {
    uint64_t tag = 0;
    uint64_t length = 0;
    if (!ReadVarint(trace, &pos, &tag) || tag != 0x0a ||
        !ReadVarint(trace, &pos, &length) || length > trace.size() - pos)
      return -1;
    pos += length;
    packets++;
  }
  return packets;
}

template <typename Byte>
bool WriteFile(const std::string& path, const std::vector<Byte>& bytes) {
  std::ofstream out(path, std::ios::out | std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()),
            static_cast<std::streamsize>(bytes.size()));
  return static_cast<bool>(out);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s SECONDS OUTFILE [BUFFER_KB]\n", argv[0]);
    return 2;
  }
  const double seconds = std::atof(argv[1]);
  const std::string out_path = argv[2];
  const uint32_t buffer_kb = argc > 3 ? static_cast<uint32_t>(std::atol(argv[3])) : 16384;

  perfetto::TracingInitArgs args;
  args.backends = perfetto::kSystemBackend;
  perfetto::Tracing::Initialize(args);

  perfetto::TraceConfig cfg;
  auto* buffer = cfg.add_buffers();
  buffer->set_size_kb(buffer_kb);
  buffer->set_fill_policy(perfetto::TraceConfig::BufferConfig::RING_BUFFER);
  auto* ds = cfg.add_data_sources()->mutable_config();
  ds->set_name("track_event");
  perfetto::protos::gen::TrackEventConfig track_event_cfg;
  track_event_cfg.add_enabled_categories("*");
  ds->set_track_event_config_raw(track_event_cfg.SerializeAsString());

  auto session = perfetto::Tracing::NewTrace(perfetto::kSystemBackend);
  session->Setup(cfg);
  session->StartBlocking();
  std::this_thread::sleep_for(
      std::chrono::microseconds(static_cast<long>(seconds * 1e6)));
  session->StopBlocking();

  std::vector<char> trace = session->ReadTraceBlocking();
  const auto stats = session->GetTraceStatsBlocking();
  if (!WriteFile(out_path, trace) ||
      !WriteFile(out_path + ".stats", stats.trace_stats_data)) {
    std::fprintf(stderr, "consumer_app: cannot write %s\n", out_path.c_str());
    return 1;
  }
  std::printf("consumer_app packets=%ld bytes=%zu stats_ok=%d\n", CountPackets(trace),
              trace.size(), stats.success ? 1 : 0);
  std::fflush(stdout);
  return 0;
}
