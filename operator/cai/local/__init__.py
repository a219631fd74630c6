"""The local runner behind `cai run` / `cai status` / `cai report`: the same plan and stages as the
operator, run as subprocesses on this machine, with status kept as JSON in the store."""
