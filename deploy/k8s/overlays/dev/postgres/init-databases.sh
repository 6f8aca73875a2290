#!/bin/sh
# Creates one database per posttrain service (SERVICE_DATABASES), owned by POSTGRES_USER.
# The postgres image runs this from /docker-entrypoint-initdb.d on the first start of an
# empty data volume only; add a database to an existing volume by hand (CREATE DATABASE).
set -e
for db in $SERVICE_DATABASES; do
  echo "creating database $db"
  psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -c "CREATE DATABASE \"$db\" OWNER \"$POSTGRES_USER\""
done
