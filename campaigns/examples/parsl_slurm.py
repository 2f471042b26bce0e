"""A Parsl configuration for running a campaign's labels and pool scoring on a Slurm cluster.

Use it from a campaign file (the path is relative to the campaign file):

    dispatch:
      kind: parsl
      config: parsl_slurm.py
      label_executor: cpu_labels
      score_executor: gpu_scores
      retries: 2

aloop reads the variable `config`, sets its `retries` to the campaign's `dispatch.retries`, and puts
Parsl's logs under RUN/parsl. Edit the partitions, account, walltimes and ENVIRONMENT for your site;
docs/dispatch.md explains each choice.
"""
from parsl.addresses import address_by_hostname
from parsl.config import Config
from parsl.executors import HighThroughputExecutor
from parsl.providers import SlurmProvider

# Workers must run the same aloop (and Python packages) as the main process, and see the campaign's
# input files at the same paths: a shared filesystem. OMP_NUM_THREADS matches cores_per_worker below,
# so that PySCF's and torch's threads do not oversubscribe the node.
ENVIRONMENT = "module load python/3.11; source $HOME/venvs/aloop/bin/activate; export OMP_NUM_THREADS=4"

config = Config(
    executors=[
        # Labels: one configuration per worker (CCSD(T), pyqmc DMC, an ASE oracle), 4 cores each, so
        # 8 at a time on a 32-core node; Slurm jobs (blocks) come and go with the queue of tasks.
        HighThroughputExecutor(
            label="cpu_labels",
            address=address_by_hostname(),   # on some clusters: address_by_interface("ib0")
            cores_per_worker=4,
            provider=SlurmProvider(
                partition="cpu",
                account="my-allocation",
                nodes_per_block=1,
                init_blocks=0,
                min_blocks=0,
                max_blocks=8,
                walltime="04:00:00",
                worker_init=ENVIRONMENT,
            ),
        ),
        # Pool scoring: backbone features of new candidates, in shards of dispatch.shard_size; one
        # worker per GPU (Parsl sets CUDA_VISIBLE_DEVICES), and `device: auto` uses it.
        HighThroughputExecutor(
            label="gpu_scores",
            address=address_by_hostname(),
            available_accelerators=4,
            max_workers_per_node=4,
            provider=SlurmProvider(
                partition="gpu",
                account="my-allocation",
                gres="gpu:4",
                nodes_per_block=1,
                init_blocks=0,
                min_blocks=0,
                max_blocks=2,
                walltime="01:00:00",
                worker_init=ENVIRONMENT,
            ),
        ),
    ],
)
