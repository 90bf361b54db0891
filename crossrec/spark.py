"""One way to get a SparkSession, configured from settings, for every batch job and test.

Why here and not in each job: the local-mode gotchas measured on this machine (the worker must
use the venv's python, the driver must bind to loopback, few shuffle partitions on 2 cores) are
easy to forget, and a job that forgets them fails in ways that look unrelated.

On a cluster (``spark.master`` = ``spark://...``) the executors connect back to the driver at
``spark.driver_host``; the driver listens on ``spark.bind_address`` (loopback on one machine,
``0.0.0.0`` in a container whose name is the driver host).
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

from crossrec.settings import Settings

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


def spark_session(settings: Settings, app_name: str = "crossrec") -> SparkSession:
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    from pyspark.sql import SparkSession

    spark_cfg = settings.spark
    builder = (
        SparkSession.builder.appName(app_name)
        .master(spark_cfg.master)
        .config("spark.driver.memory", spark_cfg.driver_memory)
        .config("spark.sql.shuffle.partitions", str(spark_cfg.shuffle_partitions))
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.driver.host", spark_cfg.driver_host)
        .config("spark.driver.bindAddress", spark_cfg.bind_address)
        .config("spark.executor.memory", spark_cfg.executor_memory)
        .config("spark.pyspark.python", os.environ["PYSPARK_PYTHON"])
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")  # jobs print their own progress
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.sql.sources.partitionOverwriteMode", "dynamic")
    )
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("WARN")
    return session
