"""Issue 23 for a group: the 4-rank DDP example with the memory tier every K steps, one random rank
SIGKILLed 20 times; each crash resumes the whole group from the newest step every rank holds in
memory (steps lost <= K + 1), and the run ends bit-identical to an uninterrupted one."""
import random
import sys

import pytest

from ddphelpers import assert_same_state, metrics, newest, start, write_spec
from tests.jobs.jobhelpers import crash_campaign
from traind.store import memory_tier

pytestmark = pytest.mark.slow
K = 3


def test_twenty_rank_sigkills_lose_at_most_k_plus_one_steps_and_the_group_ends_bit_identical(tmp_path, reference_run):
    spec = write_spec(tmp_path, checkpoint={"memory": {"every_steps": K}},
                      restart={"max_restarts": 30, "backoff": {"initial_seconds": 0, "max_seconds": 0, "jitter": 0}})
    run_dir, log = tmp_path / "ddp", tmp_path / "supervisor.log"
    sup = start(spec, log)
    sup.communicate = lambda timeout=None: (log.read_text(), None)     # what crash_campaign shows on failure
    lost = crash_campaign(sup, run_dir, 20, random.Random(2323), every=K, ranks=4)
    assert sup.wait(600) == 0, log.read_text()[-3000:]
    print(f"steps lost per rank crash (memory tier every {K} steps, 4 ranks): {sorted(lost)}; max {max(lost)}",
          file=sys.stderr)
    assert all(0 <= n <= K + 1 for n in lost), lost
    assert log.read_text().count("in memory); log") >= 10
    assert_same_state(newest(run_dir), newest(reference_run))
    assert metrics(run_dir) == metrics(reference_run)
    assert not memory_tier.tier_dir(run_dir).exists()
