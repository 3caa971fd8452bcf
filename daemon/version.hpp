// The version string. Defined in version.cpp, which each executable compiles itself
// (not the library), so a test can build the same daemon reporting another version.
#pragma once

namespace echorelay {
extern const char* const kVersion;
}
