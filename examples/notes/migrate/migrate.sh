#!/bin/sh
# Applies each /migrations/*.sql that is not yet applied, in name order: each file and its row in
# schema_migrations in one transaction, stopping at the first error (the Job fails with psql's message).
# The connection: PGHOST, PGDATABASE, PGUSER, PGPASSWORD (the Job's environment).
set -eu
export PGOPTIONS="${PGOPTIONS:-} -c client_min_messages=warning"  # no NOTICE for what already exists
psql -v ON_ERROR_STOP=1 -q -c 'CREATE TABLE IF NOT EXISTS schema_migrations (name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())'
for file in /migrations/*.sql; do
  name=$(basename "$file")
  if [ "$(echo "SELECT 1 FROM schema_migrations WHERE name = :'name'" | psql -tA -v name="$name")" = 1 ]; then
    echo "migrate: $name already applied"
    continue
  fi
  echo "migrate: applying $name"
  psql -v ON_ERROR_STOP=1 -q --single-transaction -f "$file" -c "INSERT INTO schema_migrations (name) VALUES ('$name')"
done
echo "migrate: schema up to date"
