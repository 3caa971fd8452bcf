// The admin endpoint's routing decision, pure (Beast parses the request; this says what
// it asks for), so it can be fuzzed with Beast's parser without sockets.
#pragma once

// Boost 1.81's verb.hpp uses std::ostream without including <ostream>.
#include <ostream>
#include <string_view>

#include <boost/beast/http/verb.hpp>

namespace echorelay::admin {

enum class Route { Metrics, Healthz, Readyz, NotFound, MethodNotAllowed };

// GET or HEAD of exactly "/metrics", "/healthz", "/readyz"; any other target is
// NotFound, any other method MethodNotAllowed.
Route route(boost::beast::http::verb method, std::string_view target);

}  // namespace echorelay::admin
