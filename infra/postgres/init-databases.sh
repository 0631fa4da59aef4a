#!/bin/sh
# Creates the MLflow and Prefect databases on the first start of the Postgres volume.
set -eu
for db in "$MLFLOW_DB" "$PREFECT_DB"; do
  psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_USER" -c "CREATE DATABASE \"$db\";"
done
