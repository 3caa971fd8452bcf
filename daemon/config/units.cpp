// The config's small vocabularies: durations ("30s"), sizes ("64KiB"), enum names,
// and the "did you mean" suggestion. Shared with the command line (probe --timeout),
// so every error names the text it was given.
#include <algorithm>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "config/config.hpp"

namespace echorelay::config {
namespace {

Error unit_error(std::string_view text, std::string_view why) {
  std::string message = "\"";
  message.append(text);
  message += "\": ";
  message.append(why);
  return make_error(std::move(message));
}

struct Number {
  std::uint64_t value = 0;
  std::string_view unit;
};

// The leading decimal digits and the rest as the unit. Signs and fractions are
// refused here so that both units give the same message for them.
Result<Number> split_number(std::string_view text, std::string_view what, std::string_view example) {
  if (text.empty()) return unit_error(text, "empty " + std::string(what) + " (expected e.g. \"" + std::string(example) + "\")");
  if (text.front() == '-') return unit_error(text, std::string(what) + " must not be negative");
  std::size_t i = 0;
  std::uint64_t value = 0;
  constexpr auto kMax = std::numeric_limits<std::uint64_t>::max();
  while (i < text.size() && text[i] >= '0' && text[i] <= '9') {
    auto digit = static_cast<std::uint64_t>(text[i] - '0');
    if (value > (kMax - digit) / 10) return unit_error(text, std::string(what) + " is too large");
    value = value * 10 + digit;
    ++i;
  }
  if (i == 0) {
    return unit_error(text, "expected a " + std::string(what) + " like \"" + std::string(example) + "\"");
  }
  if (i < text.size() && (text[i] == '.' || text[i] == ',')) {
    return unit_error(text, "only whole numbers are allowed; use a smaller unit");
  }
  return Number{value, text.substr(i)};
}

}  // namespace

Result<Duration> parse_duration(std::string_view text) {
  auto number = split_number(text, "duration", "30s");
  if (!number) return Error{number.error()};
  std::uint64_t factor_ms = 0;
  if (number->unit == "ms") {
    factor_ms = 1;
  } else if (number->unit == "s") {
    factor_ms = 1000;
  } else if (number->unit == "m") {
    factor_ms = 60 * 1000;
  } else if (number->unit == "h") {
    factor_ms = 60 * 60 * 1000;
  } else if (number->unit.empty()) {
    // A bare "0" or "30" is refused: "30" could mean seconds or milliseconds.
    return unit_error(text, "a duration needs a unit: ms, s, m or h (e.g. \"" + std::string(text) + "s\")");
  } else {
    return unit_error(text, "unknown unit \"" + std::string(number->unit) + "\" (use ms, s, m or h)");
  }
  constexpr auto kMaxMs = static_cast<std::uint64_t>(std::numeric_limits<Duration::rep>::max());
  if (number->value > kMaxMs / factor_ms) return unit_error(text, "duration is too large");
  return Duration(static_cast<Duration::rep>(number->value * factor_ms));
}

Result<std::uint64_t> parse_size(std::string_view text) {
  auto number = split_number(text, "size", "64KiB");
  if (!number) return Error{number.error()};
  const std::string_view unit = number->unit;
  int shift = -1;
  if (unit.empty() || unit == "B") {
    shift = 0;
  } else if (unit == "K" || unit == "KiB") {
    shift = 10;
  } else if (unit == "M" || unit == "MiB") {
    shift = 20;
  } else if (unit == "G" || unit == "GiB") {
    shift = 30;
  } else if (unit == "T" || unit == "TiB") {
    shift = 40;
  } else if (unit == "KB" || unit == "MB" || unit == "GB" || unit == "TB" || unit == "kB") {
    // KB means 1000 to some and 1024 to others; make the operator say which.
    // Built with append, not `"\"" + std::string(unit) + ...`: at -O3 g++ 12 inlines
    // operator+(const char*, string&&) and reports an impossible memcpy size
    // (-Wstringop-overflow, a false positive: GCC bug 105651, fixed in GCC 13).
    std::string why = "\"";
    why.append(unit);
    why += "\" is ambiguous; write \"";
    why += unit[0] == 'k' ? 'K' : unit[0];
    why += "iB\" for multiples of 1024";
    return unit_error(text, why);
  } else {
    return unit_error(text, "unknown unit \"" + std::string(unit) + "\" (use B, KiB, MiB, GiB or TiB)");
  }
  if (shift > 0 && number->value > (std::numeric_limits<std::uint64_t>::max() >> shift)) {
    return unit_error(text, "size is too large");
  }
  return number->value << shift;
}

namespace {

std::size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<std::size_t> row(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    std::size_t diagonal = row[0];
    row[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j) {
      std::size_t above = row[j];
      std::size_t cost = a[i - 1] == b[j - 1] ? 0 : 1;
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + cost});
      diagonal = above;
    }
  }
  return row[b.size()];
}

}  // namespace

std::optional<std::string> suggest(std::string_view word, const std::vector<std::string_view>& known) {
  constexpr std::size_t kMaxDistance = 2;
  std::optional<std::string> best;
  std::size_t best_distance = kMaxDistance + 1;
  for (auto candidate : known) {
    std::size_t d = edit_distance(word, candidate);
    // A one-letter word is within 2 edits of every short key; such a guess misleads.
    if (d >= std::max(word.size(), candidate.size())) continue;
    if (d < best_distance) {
      best_distance = d;
      best = std::string(candidate);
    }
  }
  return best;
}

std::string_view to_string(Protocol p) {
  switch (p) {
    case Protocol::Tcp: return "tcp";
    case Protocol::Udp: return "udp";
    case Protocol::Unix: return "unix";
    case Protocol::Multicast: return "multicast";
  }
  return "?";
}

std::string_view to_string(Handler h) {
  switch (h) {
    case Handler::Echo: return "echo";
    case Handler::Relay: return "relay";
    case Handler::Mirror: return "mirror";
  }
  return "?";
}

std::string_view to_string(Framing f) {
  switch (f) {
    case Framing::Line: return "line";
    case Framing::LengthPrefixed: return "length-prefixed";
    case Framing::Raw: return "raw";
  }
  return "?";
}

std::string_view to_string(LogLevel l) {
  switch (l) {
    case LogLevel::Trace: return "trace";
    case LogLevel::Debug: return "debug";
    case LogLevel::Info: return "info";
    case LogLevel::Warn: return "warn";
    case LogLevel::Error: return "error";
  }
  return "?";
}

std::string_view to_string(LogFormat f) {
  switch (f) {
    case LogFormat::Auto: return "auto";
    case LogFormat::Text: return "text";
    case LogFormat::Json: return "json";
    case LogFormat::Journal: return "journal";
  }
  return "?";
}

}  // namespace echorelay::config
