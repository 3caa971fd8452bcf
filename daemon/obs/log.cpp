// Logger set-up: text or JSON lines on stderr, or the journal. JSON needs the message
// escaped, which spdlog's pattern language cannot do, hence the custom flag.
#include "obs/log.hpp"

#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/sinks/base_sink.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <syslog.h>
#include <systemd/sd-journal.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

namespace echorelay::obs {

namespace {

class JsonEscapedMessage final : public spdlog::custom_flag_formatter {
 public:
  void format(const spdlog::details::log_msg& msg, const std::tm&, spdlog::memory_buf_t& dest) override {
    for (char c : std::string_view(msg.payload.data(), msg.payload.size())) {
      switch (c) {
        case '"': dest.append(std::string_view("\\\"")); break;
        case '\\': dest.append(std::string_view("\\\\")); break;
        case '\n': dest.append(std::string_view("\\n")); break;
        case '\r': dest.append(std::string_view("\\r")); break;
        case '\t': dest.append(std::string_view("\\t")); break;
        default:
          if (static_cast<unsigned char>(c) < 0x20) {
            char esc[8];
            std::snprintf(esc, sizeof esc, "\\u%04x", c);
            dest.append(std::string_view(esc));
          } else {
            dest.push_back(c);
          }
      }
    }
  }
  std::unique_ptr<custom_flag_formatter> clone() const override { return std::make_unique<JsonEscapedMessage>(); }
};

// The journal sink: MESSAGE, PRIORITY and SYSLOG_IDENTIFIER like spdlog's
// systemd_sink, plus the structured fields an operator filters on
// (`journalctl LISTENER=echo-tcp`, `REASON=...`), taken from the message's fixed
// shapes: "listener NAME: ...", "udp NAME: ...", "[cID NAME] ...",
// "listening on PROTO ADDRESS as NAME", "..., peer ADDRESS, ..." and the reason at
// the end of a connection's "closed"/"end" line or of "hot restart failed: REASON;".
struct JournalFields {
  std::string_view listener, peer, reason;
};

std::string_view word_after(std::string_view text, std::string_view prefix, std::string_view stops) {
  const auto at = text.find(prefix);
  if (at == std::string_view::npos) return {};
  text.remove_prefix(at + prefix.size());
  return text.substr(0, text.find_first_of(stops));
}

JournalFields journal_fields(std::string_view m) {
  JournalFields f;
  if (m.starts_with("listener ") || m.starts_with("udp ")) {
    f.listener = word_after(m, " ", ": ");
  } else if (m.starts_with("[c")) {
    f.listener = word_after(m, " ", "]");
  } else if (m.starts_with("listening on ")) {
    f.listener = word_after(m, " as ", " ");
  }
  f.peer = word_after(m, "peer ", ", ");
  if (m.starts_with("hot restart failed: ")) {
    f.reason = m.substr(20, m.rfind("; still serving") - 20);
  } else if (m.starts_with("[c") && m.find("] closed: ") != std::string_view::npos) {
    const auto comma = m.rfind(", ");
    if (comma != std::string_view::npos) f.reason = m.substr(comma + 2);
  }
  return f;
}

class JournalSink final : public spdlog::sinks::base_sink<std::mutex> {
 protected:
  void sink_it_(const spdlog::details::log_msg& msg) override {
    const std::string_view text(msg.payload.data(), msg.payload.size());
    int priority = LOG_INFO;
    switch (msg.level) {
      case spdlog::level::trace:
      case spdlog::level::debug: priority = LOG_DEBUG; break;
      case spdlog::level::info: priority = LOG_INFO; break;
      case spdlog::level::warn: priority = LOG_WARNING; break;
      case spdlog::level::err: priority = LOG_ERR; break;
      case spdlog::level::critical: priority = LOG_CRIT; break;
      default: break;
    }
    const auto f = journal_fields(text);
    std::vector<std::string> fields;
    fields.reserve(6);
    fields.push_back("MESSAGE=" + std::string(text));
    fields.push_back("PRIORITY=" + std::to_string(priority));
    fields.emplace_back("SYSLOG_IDENTIFIER=echorelayd");
    if (!f.listener.empty()) fields.push_back("LISTENER=" + std::string(f.listener));
    if (!f.peer.empty()) fields.push_back("PEER=" + std::string(f.peer));
    if (!f.reason.empty()) fields.push_back("REASON=" + std::string(f.reason));
    std::vector<iovec> iov;
    iov.reserve(fields.size());
    for (auto& field : fields) iov.push_back({field.data(), field.size()});
    ::sd_journal_sendv(iov.data(), static_cast<int>(iov.size()));
  }
  void flush_() override {}
};

// systemd sets JOURNAL_STREAM=dev:inode of the stream our stderr is connected to.
bool stderr_is_journal() {
  const char* js = std::getenv("JOURNAL_STREAM");
  if (!js) return false;
  struct stat st {};
  if (::fstat(STDERR_FILENO, &st) != 0) return false;
  unsigned long dev = 0, ino = 0;
  if (std::sscanf(js, "%lu:%lu", &dev, &ino) != 2) return false;
  return st.st_dev == dev && st.st_ino == ino;
}

spdlog::level::level_enum to_spdlog(config::LogLevel level) {
  switch (level) {
    case config::LogLevel::Trace: return spdlog::level::trace;
    case config::LogLevel::Debug: return spdlog::level::debug;
    case config::LogLevel::Info: return spdlog::level::info;
    case config::LogLevel::Warn: return spdlog::level::warn;
    case config::LogLevel::Error: return spdlog::level::err;
  }
  return spdlog::level::info;
}

}  // namespace

void setup_logging(config::LogLevel level, config::LogFormat format) {
  if (format == config::LogFormat::Auto) format = stderr_is_journal() ? config::LogFormat::Journal : config::LogFormat::Text;
  std::shared_ptr<spdlog::logger> logger;
  if (format == config::LogFormat::Journal) {
    logger = std::make_shared<spdlog::logger>("echorelay", std::make_shared<JournalSink>());
  } else {
    logger = std::make_shared<spdlog::logger>("echorelay", std::make_shared<spdlog::sinks::stderr_sink_mt>());
    if (format == config::LogFormat::Json) {
      auto formatter = std::make_unique<spdlog::pattern_formatter>(spdlog::pattern_time_type::utc);
      formatter->add_flag<JsonEscapedMessage>('*').set_pattern(
          R"({"time":"%Y-%m-%dT%H:%M:%S.%fZ","level":"%l","pid":%P,"msg":"%*"})");
      logger->set_formatter(std::move(formatter));
    } else {
      logger->set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ [%P] %v");
    }
  }
  logger->set_level(to_spdlog(level));
  logger->flush_on(spdlog::level::info);
  spdlog::set_default_logger(std::move(logger));
}

void log_session_end(const SessionEnd& e) {
  const std::string requests = e.requests < 0 ? std::string("-") : std::to_string(e.requests);
  // The reason goes last, after ", ": the journal's REASON= is read from there.
  spdlog::debug("[c{} {}] closed: {}, peer {}, upstream {}, {} bytes in, {} bytes out, {} requests, {}ms, {}", e.id,
                e.listener, e.kind, e.peer, e.upstream, e.bytes_in, e.bytes_out, requests, e.duration.count(), e.reason);
}

}  // namespace echorelay::obs
