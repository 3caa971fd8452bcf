// The service as this process sees it: one state, moved only by the transitions below,
// from which App reads who speaks for the service and what a signal means now. App
// does the work (sockets, notifications, the drain); this class only decides, so the
// interleavings that restart bugs live in are in one small, unit-tested place.
//
//                 started()                reload_signal()
//     Starting ───────────────▶ Serving ───────────────────▶ Restarting
//      │   ▲ reload_signal():     │   ▲      restart_failed()    │
//      │   └ remembered, run      │   └──────────────────────────┤
//      │     after started()      │ stop_signal()                │ handed_over()
//      │ stop_signal()            ▼                              ▼
//      └──────────────────────▶ Draining ──── handed_over() ──▶ HandedOver
//                                 │  (a stop raced the successor's READY)
//            deadline_passed(),   │                              │
//            2nd stop_signal()    ▼                              │
//                               Forced ◀─────────────────────────┤
//                                 │                              │
//                                 └────────▶ Stopped ◀───────────┘
//                                   stopped(): the last session is gone
//
// Who speaks for the service ("main": pid file, MAINPID/READY/STOPPING, the fd store,
// Unix socket files, the watchdog): a first process from the start, a successor once
// started() (never if a stop came first), nobody after handed_over(). The restart's
// own steps (spawn, readiness, reaping) are the Restarter's (restart.hpp).
#pragma once

#include <string_view>

namespace echorelay::lifecycle {

class Service {
 public:
  enum class State { Starting, Serving, Restarting, Draining, HandedOver, Forced, Stopped };

  // `successor`: started by a predecessor's hot restart (not main until started()).
  explicit Service(bool successor) : main_(!successor) {}

  State state() const { return state_; }
  bool is_main() const { return main_; }
  // Connections are being finished: no new work is taken (also after Forced).
  bool draining() const { return state_ != State::Starting && state_ != State::Serving && state_ != State::Restarting; }
  // The drain deadline passed or a second stop came: what was left was closed.
  bool forced() const { return forced_; }

  // Start-up is done. True: become main and report READY=1. False: a stop came first;
  // drain what was accepted without ever speaking for the service.
  bool started();
  // A reload (SIGHUP) that arrived during start-up, to run now that it is over.
  bool take_deferred_reload();

  enum class Stop { Drain, AlreadyDraining, Force };
  // SIGTERM/SIGINT. Drain: begin the drain now. AlreadyDraining: a handover's drain is
  // under way; this was the first stop. Force: the second stop closes everything.
  Stop stop_signal();

  enum class Reload { Restart, Deferred, InProgress, Ignored };
  // SIGHUP. Restart: start the hot restart now. Deferred: once started(). InProgress: a
  // successor is starting already. Ignored: draining.
  Reload reload_signal();
  // The successor failed: back to serving (unless a stop came meanwhile).
  void restart_failed();
  // The successor reported ready and is main now. True: begin the drain (false when
  // a stop's drain already runs).
  bool handed_over();
  // The drain deadline passed: close what is left.
  void deadline_passed();
  void stopped();

 private:
  State state_ = State::Starting;
  bool main_;
  bool forced_ = false;
  bool reload_deferred_ = false;
  bool stop_seen_ = false;  // a stop arrived (a handover's drain is not one)
};

std::string_view to_string(Service::State state);

}  // namespace echorelay::lifecycle
