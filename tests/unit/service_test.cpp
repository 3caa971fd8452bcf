// The service state machine, transition by transition: the interleavings of signals,
// start-up and handover that the restart bugs of the past lived in.
#include "lifecycle/service.hpp"

#include <gtest/gtest.h>

namespace echorelay::lifecycle {
namespace {

using State = Service::State;

TEST(Service, AFirstProcessSpeaksForTheServiceFromTheStartASuccessorOnlyOnceStarted) {
  Service first(false);
  EXPECT_TRUE(first.is_main());
  Service successor(true);
  EXPECT_FALSE(successor.is_main());
  EXPECT_TRUE(successor.started());
  EXPECT_TRUE(successor.is_main());
  EXPECT_EQ(successor.state(), State::Serving);
  EXPECT_FALSE(successor.draining());
}

TEST(Service, ASuccessorStoppedBeforeItStartedDrainsWithoutEverTakingOver) {
  Service s(true);
  EXPECT_EQ(s.stop_signal(), Service::Stop::Drain);
  EXPECT_FALSE(s.started());
  EXPECT_FALSE(s.is_main());
  EXPECT_TRUE(s.draining());
  EXPECT_EQ(s.state(), State::Draining);
}

TEST(Service, AReloadDuringStartUpRunsOnceStartedAndOnlyOnce) {
  Service s(false);
  EXPECT_EQ(s.reload_signal(), Service::Reload::Deferred);
  EXPECT_FALSE(s.take_deferred_reload());  // not before started()
  EXPECT_TRUE(s.started());
  EXPECT_TRUE(s.take_deferred_reload());
  EXPECT_FALSE(s.take_deferred_reload());
}

TEST(Service, ReloadRestartsOnceAndAFailedSuccessorLeavesItServing) {
  Service s(false);
  ASSERT_TRUE(s.started());
  EXPECT_EQ(s.reload_signal(), Service::Reload::Restart);
  EXPECT_EQ(s.state(), State::Restarting);
  EXPECT_EQ(s.reload_signal(), Service::Reload::InProgress);
  s.restart_failed();
  EXPECT_EQ(s.state(), State::Serving);
  EXPECT_TRUE(s.is_main());
  EXPECT_FALSE(s.draining());
}

TEST(Service, AHandoverStartsTheDrainAndTheFirstStopAfterItIsNotTheSecond) {
  Service s(false);
  ASSERT_TRUE(s.started());
  ASSERT_EQ(s.reload_signal(), Service::Reload::Restart);
  EXPECT_TRUE(s.handed_over());
  EXPECT_FALSE(s.is_main());
  EXPECT_EQ(s.state(), State::HandedOver);
  EXPECT_EQ(s.reload_signal(), Service::Reload::Ignored);
  EXPECT_EQ(s.stop_signal(), Service::Stop::AlreadyDraining);
  EXPECT_FALSE(s.forced());
  EXPECT_EQ(s.stop_signal(), Service::Stop::Force);
  EXPECT_TRUE(s.forced());
}

TEST(Service, AStopDuringARestartDrainsAsMainUntilTheSuccessorWinsTheRace) {
  Service s(false);
  ASSERT_TRUE(s.started());
  ASSERT_EQ(s.reload_signal(), Service::Reload::Restart);
  EXPECT_EQ(s.stop_signal(), Service::Stop::Drain);
  EXPECT_TRUE(s.is_main());  // STOPPING=1 is ours to send
  s.restart_failed();        // the aborted successor exits: still draining
  EXPECT_EQ(s.state(), State::Draining);
  // Had it reported ready first, it is main and the drain already runs.
  Service raced(false);
  ASSERT_TRUE(raced.started());
  ASSERT_EQ(raced.reload_signal(), Service::Reload::Restart);
  ASSERT_EQ(raced.stop_signal(), Service::Stop::Drain);
  EXPECT_FALSE(raced.handed_over());
  EXPECT_FALSE(raced.is_main());
  EXPECT_EQ(raced.stop_signal(), Service::Stop::Force);  // that was the second stop
}

TEST(Service, TheDeadlineForcesTheDrainAndStoppedIsFinal) {
  Service s(false);
  ASSERT_TRUE(s.started());
  s.deadline_passed();  // not draining: nothing to force
  EXPECT_FALSE(s.forced());
  ASSERT_EQ(s.stop_signal(), Service::Stop::Drain);
  s.deadline_passed();
  EXPECT_TRUE(s.forced());
  EXPECT_EQ(s.state(), State::Forced);
  s.stopped();
  EXPECT_EQ(s.state(), State::Stopped);
  EXPECT_TRUE(s.forced());
  EXPECT_TRUE(s.is_main());  // a main process that stopped still removes its files
  EXPECT_EQ(to_string(s.state()), "stopped");
}

}  // namespace
}  // namespace echorelay::lifecycle
