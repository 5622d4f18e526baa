"""Worker jobs on a batch scheduler, one call away from the notebook.

::

    from omniq.hpc import SlurmWorkers

    pool = SlurmWorkers(oq, partition="gpu", cores=4, gpus=1, walltime="02:00:00")
    pool.scale(4)                       # or pool.adapt(minimum=0, maximum=20)
    pool.jobs()                         # [Job(id='123_0', state='RUNNING', ...), ...]
    pool.close()                        # cancels every job it started

Each job runs ``omniq worker`` against ``oq``'s storage. ``JobWorkers`` (``base.py``) is what
does not depend on the scheduler: scale / adapt / close. It keeps its jobs in a ``JobBook``
(``book.py``: pure bookkeeping and the how-many-jobs rule), checks them from a ``Monitor``
thread (``monitor.py``), and closes with the OmniQ and at interpreter exit (``link.py``). It
holds a ``JobSpec`` (``jobspec.py``: the job's command,
script and private environment file) and checks with ``reach.py`` that jobs can reach the
storage. A scheduler is a small subclass giving its three commands (submit, cancel,
list) and their parsing: ``SlurmWorkers`` (``slurm.py``); PBS or LSF would be another.
"""

from .base import (
    Job,
    JobSystemError,
    JobWorkers,
    StorageReachWarning,
    parse_walltime,
    pools,
    storage_tag,
)
from .slurm import SlurmWorkers, omniq_jobs

__all__ = [
    "Job",
    "JobSystemError",
    "JobWorkers",
    "SlurmWorkers",
    "StorageReachWarning",
    "omniq_jobs",
    "parse_walltime",
    "pools",
    "storage_tag",
]
