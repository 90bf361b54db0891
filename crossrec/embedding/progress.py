"""Rich progress bars for the embedding job: a Spark action, fed by the status tracker (the Spark
UI is off here), or an embedding done in the driver, fed per forward batch.

Spark progress is counted in finished tasks of the running stages (the status tracker knows no
finer unit); the embedding job's tasks are a few thousand items each (fewer, larger tasks cost
less), so the bar moves in steps of that size.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from crossrec.console import console


def _bar() -> Progress:
    """The one look of the embedding job's bars: description, bar, done/total, elapsed."""
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console, transient=False,
    )


@contextmanager
def spark_progress(spark, description: str, job_group: str) -> Iterator[None]:
    """Show completed/total tasks of the jobs in ``job_group`` while the body runs."""
    sc = spark.sparkContext
    sc.setJobGroup(job_group, description)
    stop = threading.Event()
    progress = _bar()
    task = progress.add_task(description, total=None)

    def poll() -> None:
        tracker = sc.statusTracker()
        while not stop.wait(0.5):
            done = total = 0
            for job_id in tracker.getJobIdsForGroup(job_group):
                job = tracker.getJobInfo(job_id)
                if job is None:
                    continue
                for stage_id in job.stageIds:
                    stage = tracker.getStageInfo(stage_id)
                    if stage is not None:
                        done += stage.numCompletedTasks
                        total += stage.numTasks
            if total:
                progress.update(task, completed=done, total=total)

    thread = threading.Thread(target=poll, daemon=True)
    with progress:
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=2)
            sc.setLocalProperty("spark.jobGroup.id", None)


@contextmanager
def local_progress(description: str, total: int) -> Iterator[Callable[[int], None]]:
    """Item-level progress of an embedding done in this process; yields ``advance(n_items)``."""
    progress = _bar()
    task = progress.add_task(description, total=total)
    with progress:
        yield lambda n: progress.advance(task, n)
