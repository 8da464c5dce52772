"""The transition function alone: every edge, and the non-edges that must stay non-edges."""
import pytest

from traind.supervisor.states import TERMINAL, Facts, State, Trigger, transition

S, T = State, Trigger


@pytest.mark.parametrize("state,trigger,facts,target", [
    (S.STARTING, T.CHILD_SPOKE, Facts(), S.RUNNING),
    (S.STARTING, T.SPAWN_FAILED, Facts(), S.FAILED),
    (S.RUNNING, T.STOP_REQUESTED, Facts(), S.STOPPING),
    (S.STARTING, T.STOP_REQUESTED, Facts(), S.STOPPING),
    (S.BACKING_OFF, T.STOP_REQUESTED, Facts(), S.PREEMPTED),
    (S.RUNNING, T.HANG_DETECTED, Facts(), S.STOPPING),
    (S.BACKING_OFF, T.BACKOFF_ELAPSED, Facts(), S.STARTING),
    (S.RUNNING, T.CHILD_EXITED, Facts(exit_code=0), S.SUCCEEDED),
    (S.STOPPING, T.CHILD_EXITED, Facts(exit_code=0, stop_requested=True), S.SUCCEEDED),
    (S.STOPPING, T.CHILD_EXITED, Facts(exit_code=75, stop_requested=True), S.PREEMPTED),
    (S.STOPPING, T.CHILD_EXITED, Facts(exit_code=None, stop_requested=True), S.PREEMPTED),
    (S.RUNNING, T.CHILD_EXITED, Facts(exit_code=75), S.STARTING),
    (S.RUNNING, T.CHILD_EXITED, Facts(exit_code=75, self_stop_ok=False), S.BACKING_OFF),
    (S.RUNNING, T.CHILD_EXITED, Facts(exit_code=1), S.BACKING_OFF),
    (S.STARTING, T.CHILD_EXITED, Facts(exit_code=None), S.BACKING_OFF),
    (S.STOPPING, T.CHILD_EXITED, Facts(exit_code=None), S.BACKING_OFF),        # a hang, killed
    (S.STOPPING, T.CHILD_EXITED, Facts(exit_code=75), S.BACKING_OFF),          # a hang, checkpointed
    (S.RUNNING, T.CHILD_EXITED, Facts(exit_code=2, no_retry=True), S.FAILED),
    (S.RUNNING, T.CHILD_EXITED, Facts(exit_code=1, budget_left=False), S.FAILED),
    (S.STARTING, T.HANG_DETECTED, None, S.STOPPING),     # no hello within the start-up timeout
])
def test_edges(state, trigger, facts, target):
    t = transition(state, trigger, facts)
    assert t is not None and t.source is state and t.target is target and t.edge


@pytest.mark.parametrize("state,trigger", [
    (S.STOPPING, T.STOP_REQUESTED),      # a repeated signal must not skip the checkpoint
    (S.RUNNING, T.CHILD_SPOKE),
    (S.RUNNING, T.BACKOFF_ELAPSED),
    (S.BACKING_OFF, T.CHILD_EXITED),
] + [(s, t) for s in TERMINAL for t in Trigger])
def test_non_edges(state, trigger):
    assert transition(state, trigger, Facts(exit_code=1)) is None
