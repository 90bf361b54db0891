"""The nightly pipeline's own logic: data-quality gate, promotion decision, strategy record, run
summary, failure alerts, and running the DAG under a real Airflow. The DAG files only call these."""
