// See version.hpp; ECHORELAY_VERSION comes from CMake per executable.
#include "version.hpp"

namespace echorelay {
const char* const kVersion = ECHORELAY_VERSION;
}
