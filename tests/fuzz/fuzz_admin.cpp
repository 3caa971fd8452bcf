// The admin HTTP request path (daemon/admin/*): the daemon parses nothing beyond Beast,
// so this feeds bytes in random chunks to the same Beast parser the server uses
// (http::request<empty_body>, Beast's default limits) and routes whatever request
// comes out with the server's own routing function. Checks: no crash, no hang, and
// the route is what the target and method say (exact match, no normalisation).
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>
#include <cstdint>
#include <string>
#include <string_view>

#include "admin/route.hpp"
#include "fuzz_input.hpp"

namespace http = boost::beast::http;
using echorelay::admin::Route;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  fuzz::Input in(data, size);
  const std::size_t chunk = in.byte() + 1;
  const std::string bytes = in.rest();

  http::request_parser<http::empty_body> parser;
  std::string pending;
  std::size_t offset = 0;
  boost::beast::error_code ec;
  while (!parser.is_done()) {
    if (offset >= bytes.size()) return 0;  // the client stopped: the server times out
    pending += bytes.substr(offset, chunk);
    offset += chunk;
    const std::size_t used = parser.put(boost::asio::buffer(pending), ec);
    if (ec == http::error::need_more) {
      ec = {};
      pending.erase(0, used);
      continue;
    }
    if (ec) return 0;  // a bad request: the server closes the connection
    FUZZ_CHECK(used <= pending.size());
    pending.erase(0, used);
  }
  const auto& request = parser.get();
  const std::string_view target(request.target().data(), request.target().size());
  const Route r = echorelay::admin::route(request.method(), target);
  const bool readable = request.method() == http::verb::get || request.method() == http::verb::head;
  if (!readable) {
    FUZZ_CHECK(r == Route::MethodNotAllowed);
  } else if (target == "/metrics") {
    FUZZ_CHECK(r == Route::Metrics);
  } else if (target == "/healthz") {
    FUZZ_CHECK(r == Route::Healthz);
  } else if (target == "/readyz") {
    FUZZ_CHECK(r == Route::Readyz);
  } else {
    FUZZ_CHECK(r == Route::NotFound);
  }
  return 0;
}
