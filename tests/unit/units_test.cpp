// Durations, sizes, "did you mean" and enum names: the config's small vocabularies.
#include <gtest/gtest.h>

#include <chrono>

#include "config/config.hpp"

namespace echorelay::config {
namespace {

using std::chrono::hours;
using std::chrono::milliseconds;
using std::chrono::minutes;
using std::chrono::seconds;

std::string duration_error(std::string_view text) {
  auto d = parse_duration(text);
  EXPECT_FALSE(d.ok()) << text;
  return d.ok() ? "" : d.error();
}

std::string size_error(std::string_view text) {
  auto s = parse_size(text);
  EXPECT_FALSE(s.ok()) << text;
  return s.ok() ? "" : s.error();
}

TEST(Units, ParsesEveryDurationUnit) {
  EXPECT_EQ(*parse_duration("250ms"), milliseconds(250));
  EXPECT_EQ(*parse_duration("30s"), seconds(30));
  EXPECT_EQ(*parse_duration("5m"), minutes(5));
  EXPECT_EQ(*parse_duration("1h"), hours(1));
  EXPECT_EQ(*parse_duration("0s"), Duration::zero());
}

TEST(Units, DurationWithoutUnitAsksForOne) {
  EXPECT_EQ(duration_error("0"), R"("0": a duration needs a unit: ms, s, m or h (e.g. "0s"))");
  EXPECT_EQ(duration_error("30"), R"("30": a duration needs a unit: ms, s, m or h (e.g. "30s"))");
}

TEST(Units, DurationRefusesUnknownUnitFractionsSignsAndGarbage) {
  EXPECT_EQ(duration_error("5min"), R"("5min": unknown unit "min" (use ms, s, m or h))");
  EXPECT_EQ(duration_error("1.5s"), R"("1.5s": only whole numbers are allowed; use a smaller unit)");
  EXPECT_EQ(duration_error("-1s"), R"("-1s": duration must not be negative)");
  EXPECT_EQ(duration_error("s"), R"("s": expected a duration like "30s")");
  EXPECT_EQ(duration_error(""), R"("": empty duration (expected e.g. "30s"))");
  EXPECT_EQ(duration_error("30 s"), R"("30 s": unknown unit " s" (use ms, s, m or h))");
}

TEST(Units, DurationRefusesOverflow) {
  EXPECT_EQ(duration_error("99999999999999999999s"), R"("99999999999999999999s": duration is too large)");
  EXPECT_EQ(duration_error("9223372036854775807h"), R"("9223372036854775807h": duration is too large)");
}

TEST(Units, ParsesPlainAndBinarySizes) {
  EXPECT_EQ(*parse_size("512"), 512U);
  EXPECT_EQ(*parse_size("512B"), 512U);
  EXPECT_EQ(*parse_size("64KiB"), 64U * 1024);
  EXPECT_EQ(*parse_size("64K"), 64U * 1024);
  EXPECT_EQ(*parse_size("1MiB"), 1024U * 1024);
  EXPECT_EQ(*parse_size("2M"), 2U * 1024 * 1024);
  EXPECT_EQ(*parse_size("1GiB"), 1ULL << 30);
  EXPECT_EQ(*parse_size("1G"), 1ULL << 30);
  EXPECT_EQ(*parse_size("3TiB"), 3ULL << 40);
  EXPECT_EQ(*parse_size("0"), 0U);
}

TEST(Units, SizeRefusesAmbiguousDecimalUnits) {
  EXPECT_EQ(size_error("64KB"), R"("64KB": "KB" is ambiguous; write "KiB" for multiples of 1024)");
  EXPECT_EQ(size_error("1MB"), R"("1MB": "MB" is ambiguous; write "MiB" for multiples of 1024)");
}

TEST(Units, SizeRefusesNegativeOverflowAndUnknownUnits) {
  EXPECT_EQ(size_error("-1"), R"("-1": size must not be negative)");
  EXPECT_EQ(size_error("18446744073709551616"), R"("18446744073709551616": size is too large)");
  EXPECT_EQ(size_error("17179869184GiB"), R"("17179869184GiB": size is too large)");
  EXPECT_EQ(size_error("10 apples"), R"("10 apples": unknown unit " apples" (use B, KiB, MiB, GiB or TiB))");
  EXPECT_EQ(size_error("KiB"), R"("KiB": expected a size like "64KiB")");
  EXPECT_EQ(size_error("1.5MiB"), R"("1.5MiB": only whole numbers are allowed; use a smaller unit)");
}

TEST(Units, SuggestsClosestWordWithinTwoEdits) {
  std::vector<std::string_view> known = {"framing", "max_frame", "read_timeout", "write_timeout"};
  EXPECT_EQ(suggest("framng", known), "framing");
  EXPECT_EQ(suggest("read_timout", known), "read_timeout");
  EXPECT_EQ(suggest("wirte_timeout", known), "write_timeout");
  EXPECT_EQ(suggest("completely_else", known), std::nullopt);
  EXPECT_EQ(suggest("frmaign", known), std::nullopt);  // 3 edits away
}

TEST(Units, SuggestPrefersSmallerDistance) {
  std::vector<std::string_view> known = {"tcp", "udp"};
  EXPECT_EQ(suggest("tcpp", known), "tcp");
  EXPECT_EQ(suggest("ud", known), "udp");
}

TEST(Units, SuggestDoesNotGuessForWordsWithNothingInCommon) {
  std::vector<std::string_view> known = {"ttl", "log"};
  EXPECT_EQ(suggest("x", known), std::nullopt);
  EXPECT_EQ(suggest("ab", known), std::nullopt);
}

TEST(Units, EnumNamesMatchTheConfigVocabulary) {
  EXPECT_EQ(to_string(Protocol::Tcp), "tcp");
  EXPECT_EQ(to_string(Protocol::Udp), "udp");
  EXPECT_EQ(to_string(Protocol::Unix), "unix");
  EXPECT_EQ(to_string(Protocol::Multicast), "multicast");
  EXPECT_EQ(to_string(Handler::Echo), "echo");
  EXPECT_EQ(to_string(Handler::Relay), "relay");
  EXPECT_EQ(to_string(Framing::Line), "line");
  EXPECT_EQ(to_string(Framing::LengthPrefixed), "length-prefixed");
  EXPECT_EQ(to_string(Framing::Raw), "raw");
  EXPECT_EQ(to_string(LogLevel::Trace), "trace");
  EXPECT_EQ(to_string(LogLevel::Warn), "warn");
  EXPECT_EQ(to_string(LogLevel::Error), "error");
  EXPECT_EQ(to_string(LogFormat::Auto), "auto");
  EXPECT_EQ(to_string(LogFormat::Journal), "journal");
  EXPECT_EQ(to_string(LogFormat::Json), "json");
  EXPECT_EQ(to_string(LogFormat::Text), "text");
}

}  // namespace
}  // namespace echorelay::config
