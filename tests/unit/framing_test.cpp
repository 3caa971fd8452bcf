// Frame scanning for the echo handler: boundaries, counts, max_frame, incremental use.
#include <gtest/gtest.h>

#include <string>

#include "echo/framing.hpp"

namespace echorelay::echo {
namespace {

using config::Framing;

std::span<const char> span_of(const std::string& s) { return {s.data(), s.size()}; }

std::string lp(const std::string& payload) {
  const auto n = static_cast<std::uint32_t>(payload.size());
  std::string out{static_cast<char>(n >> 24), static_cast<char>(n >> 16), static_cast<char>(n >> 8),
                  static_cast<char>(n)};
  return out + payload;
}

TEST(LineFraming, CompleteLinesAreAnsweredAndThePartialTailIsKept) {
  FrameScanner scanner(Framing::Line, 64);
  const std::string data = "one\ntwo\nthr";
  const Scan s = scanner.scan(span_of(data));
  EXPECT_EQ(s.complete, 8u);
  EXPECT_EQ(s.frames, 2u);
  EXPECT_FALSE(s.too_large);
}

TEST(LineFraming, TrickledLineCompletesAcrossScans) {
  FrameScanner scanner(Framing::Line, 64);
  std::string pending;
  for (char c : std::string("abcdef")) {
    pending.push_back(c);
    EXPECT_EQ(scanner.scan(span_of(pending)).complete, 0u);
  }
  pending.push_back('\n');
  const Scan s = scanner.scan(span_of(pending));
  EXPECT_EQ(s.complete, 7u);
  EXPECT_EQ(s.frames, 1u);
}

TEST(LineFraming, LineLongerThanMaxFrameIsRefusedEvenBeforeItsNewline) {
  FrameScanner complete_line(Framing::Line, 4);
  EXPECT_TRUE(complete_line.scan(span_of(std::string("abcde\n"))).too_large);
  FrameScanner unfinished(Framing::Line, 4);
  EXPECT_TRUE(unfinished.scan(span_of(std::string("abcde"))).too_large);
  FrameScanner exact(Framing::Line, 4);
  EXPECT_FALSE(exact.scan(span_of(std::string("abc\n"))).too_large);
}

TEST(LineFraming, OversizedSecondLineIsRefused) {
  FrameScanner scanner(Framing::Line, 4);
  EXPECT_TRUE(scanner.scan(span_of(std::string("ab\nabcdefg\n"))).too_large);
}

TEST(LengthPrefixedFraming, WholeFramesCountedAndPartialKept) {
  FrameScanner scanner(Framing::LengthPrefixed, 1024);
  const std::string data = lp("hello") + lp("") + lp("xyz").substr(0, 5);
  const Scan s = scanner.scan(span_of(data));
  EXPECT_EQ(s.complete, 9u + 4u);
  EXPECT_EQ(s.frames, 2u);
  EXPECT_FALSE(s.too_large);
}

TEST(LengthPrefixedFraming, ClaimedLengthOverMaxFrameIsRefusedFromTheHeaderAlone) {
  FrameScanner scanner(Framing::LengthPrefixed, 1024);
  const std::string header("\xff\xff\xff\xff", 4);
  const Scan s = scanner.scan(span_of(header));
  EXPECT_TRUE(s.too_large);
  EXPECT_EQ(s.complete, 0u);
}

TEST(LengthPrefixedFraming, PartialHeaderWaits) {
  FrameScanner scanner(Framing::LengthPrefixed, 1024);
  const Scan s = scanner.scan(span_of(std::string("\0\0", 2)));
  EXPECT_EQ(s.complete, 0u);
  EXPECT_FALSE(s.too_large);
}

TEST(RawFraming, EverythingIsAnsweredAsItArrives) {
  FrameScanner scanner(Framing::Raw, 4);
  const std::string data(100, 'x');
  const Scan s = scanner.scan(span_of(data));
  EXPECT_EQ(s.complete, 100u);
  EXPECT_FALSE(s.too_large);
}

}  // namespace
}  // namespace echorelay::echo
