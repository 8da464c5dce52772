"""Exit codes shared by every traind command and by jobs run under traind."""
OK = 0
FAILED = 1          # the work failed, or something checked is invalid
USAGE = 2           # bad command line or bad input file (one-line error, no traceback)
PREEMPTED = 75      # stopped after an emergency checkpoint; resumable (EX_TEMPFAIL)
UNUSABLE_CHECKPOINT = 65  # the job cannot load the resume point it was given (refused pickle,
                          # unreadable state): the supervisor sets it aside and falls back
NOT_REQUEUED = 76   # emergency checkpoint done, but the SLURM requeue was wanted and failed (resubmit)
