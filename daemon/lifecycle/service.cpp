// See service.hpp for the diagram.
#include "lifecycle/service.hpp"

#include <utility>

namespace echorelay::lifecycle {

bool Service::started() {
  if (state_ != State::Starting) return false;
  state_ = State::Serving;
  main_ = true;
  return true;
}

bool Service::take_deferred_reload() { return state_ == State::Serving && std::exchange(reload_deferred_, false); }

Service::Stop Service::stop_signal() {
  const bool second = stop_seen_;
  stop_seen_ = true;
  switch (state_) {
    case State::Starting:
    case State::Serving:
    case State::Restarting:
      state_ = State::Draining;
      return Stop::Drain;
    case State::HandedOver:
      if (!second) return Stop::AlreadyDraining;
      [[fallthrough]];
    case State::Draining:
    case State::Forced:
    case State::Stopped:
      state_ = State::Forced;
      forced_ = true;
      return Stop::Force;
  }
  return Stop::Force;
}

Service::Reload Service::reload_signal() {
  switch (state_) {
    case State::Starting:
      reload_deferred_ = true;
      return Reload::Deferred;
    case State::Serving:
      state_ = State::Restarting;
      return Reload::Restart;
    case State::Restarting:
      return Reload::InProgress;
    default:
      return Reload::Ignored;
  }
}

void Service::restart_failed() {
  if (state_ == State::Restarting) state_ = State::Serving;
}

bool Service::handed_over() {
  main_ = false;
  const bool begin_drain = state_ == State::Restarting;
  if (state_ == State::Restarting || state_ == State::Draining) state_ = State::HandedOver;
  return begin_drain;
}

void Service::deadline_passed() {
  if (!draining() || state_ == State::Stopped) return;
  state_ = State::Forced;
  forced_ = true;
}

void Service::stopped() { state_ = State::Stopped; }

std::string_view to_string(Service::State state) {
  switch (state) {
    case Service::State::Starting: return "starting";
    case Service::State::Serving: return "serving";
    case Service::State::Restarting: return "restarting";
    case Service::State::Draining: return "draining";
    case Service::State::HandedOver: return "handed over";
    case Service::State::Forced: return "forced";
    case Service::State::Stopped: return "stopped";
  }
  return "?";
}

}  // namespace echorelay::lifecycle
