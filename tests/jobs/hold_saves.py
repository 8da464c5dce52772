"""`python hold_saves.py SECONDS MODULE ARGS...`: run MODULE as __main__ with every checkpoint
write held open SECONDS right after its temp dir is created (through the store's fault_hook), so
a test can SIGKILL or SIGTERM the job while a save is in flight. Training itself is unchanged."""
import runpy
import sys
import time

from daemon import checkpoints

hold = float(sys.argv[1])


def _hold(point: str) -> None:
    if point == "begin:mkdir":
        time.sleep(hold)


checkpoints.fault_hook = _hold
module = sys.argv[2]
sys.argv = [module, *sys.argv[3:]]
runpy.run_module(module, run_name="__main__", alter_sys=True)
