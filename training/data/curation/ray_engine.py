"""The same shards on Ray: one Ray task per shard, running engine.run_shard, so a cluster writes the manifest the
local pool writes, byte for byte. Each task returns its records with their per-op counts (data-juicer's Ray executor
loses those), and the driver writes every finished shard as it arrives, so a Ray run resumes like a local one.

Ray is an optional dependency (the `data` extra), imported here only. The images must be readable where the tasks
run (a shared filesystem, or tars every node sees)."""
from __future__ import annotations


def _ray():
    try:
        import ray
    except ImportError:
        raise ImportError("the Ray engine needs ray: pip install 'qwenimage[data]'") from None
    return ray


def ray_map(run_shard, steps, tasks, address: str | None = None, num_cpus: int | None = None):
    """(shard index, records, counts) for each (index, records) task, in the order they finish: `run_shard(steps,
    records)` (the engine's, handed in: the engine imports this module, not the other way) as a Ray task per shard.
    Starts a local Ray (num_cpus) when address is None and none is running; joins the cluster at `address`
    otherwise."""
    ray = _ray()

    if not tasks:
        return
    if not ray.is_initialized():
        kw = {"address": address} if address else {"num_cpus": num_cpus}
        ray.init(**kw, include_dashboard=False, log_to_driver=False, configure_logging=False)

    @ray.remote
    def shard(steps, idx, records):
        return (idx, *run_shard(steps, records))

    steps_ref = ray.put(steps)   # built ops, shipped once
    pending = [shard.remote(steps_ref, idx, records) for idx, records in tasks]
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        yield ray.get(ready[0])
