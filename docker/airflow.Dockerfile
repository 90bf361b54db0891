# Airflow image with crossrec installed (the DAGs call crossrec's library and CLI).
FROM crossrec-app:0.1.0
USER root
RUN pip install --no-cache-dir -c requirements/lock.txt "apache-airflow[postgres]"
USER 1000
