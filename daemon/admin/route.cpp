// Admin routing; see route.hpp.
#include "admin/route.hpp"

namespace echorelay::admin {

Route route(boost::beast::http::verb method, std::string_view target) {
  using boost::beast::http::verb;
  if (method != verb::get && method != verb::head) return Route::MethodNotAllowed;
  if (target == "/metrics") return Route::Metrics;
  if (target == "/healthz") return Route::Healthz;
  if (target == "/readyz") return Route::Readyz;
  return Route::NotFound;
}

}  // namespace echorelay::admin
