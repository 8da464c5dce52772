"""SaveCost: the step time beside a background save against the step time without."""
from traind.jobs.runtime.savecost import MIN_STEPS, SaveCost


def steps(cost, t, seconds, n):
    for _ in range(n):
        t += seconds
        cost.step(t)
    return t


def test_steps_beside_a_save_over_steps_without():
    cost = SaveCost()
    t = steps(cost, 0.0, 1.0, MIN_STEPS + 1)      # the first step only starts the clock
    assert cost.slowdown() is None                # no step beside a save yet
    cost.save_started()                           # called at a step boundary
    t = steps(cost, t, 1.5, 2)
    assert cost.slowdown() is None                # two steps beside a save: too few yet
    cost.save_committed()                         # mid-step: this step was beside the save too
    t = steps(cost, t, 1.5, 1)
    assert cost.slowdown() == 1.5
    t = steps(cost, t, 1.0, 2)                    # quiet again: the ratio stays
    assert cost.slowdown() == 1.5


def test_the_step_a_commit_lands_in_is_beside_the_save_and_the_next_is_not():
    cost = SaveCost()
    t = steps(cost, 0.0, 1.0, 4)
    for _ in range(2):
        cost.save_started()
        t = steps(cost, t, 2.0, 1)
        cost.save_committed()
        t = steps(cost, t, 2.0, 1)                # the commit landed in this one
        t = steps(cost, t, 1.0, 1)                # none in flight: quiet
    assert cost.slowdown() == 2.0
    t = steps(cost, t, 3.0, 1)                    # a slow step with no save is not the save's
    assert cost.slowdown() < 2.0
