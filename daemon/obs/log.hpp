// Logging set-up: one spdlog logger ("echorelay") as the default, text or JSON to
// stderr, or the journal. Call sites use spdlog::info/debug/... directly.
#pragma once

#include <string>

#include "config/config.hpp"

namespace echorelay::obs {

// Replaces the default logger. `auto` picks journal when JOURNAL_STREAM names our
// stderr, else text.
void setup_logging(config::LogLevel level, config::LogFormat format);

}  // namespace echorelay::obs
