#!/usr/bin/env bash
# Install, start and provision a PostgreSQL server for the tests (fresh Debian, as root).
#
#   eval "$(.ci/postgres.sh)"      # sets SEARCH_TEST_POSTGRES for tests/test_postgres.py and tests/test_workers.py
#
# Idempotent: an installed package, an existing or running cluster, role or database are kept.
# Only the `export SEARCH_TEST_POSTGRES=...` line goes to stdout; progress goes to stderr.
# Settings (environment): PG_USER (search), PG_PASSWORD (search), PG_DB (search_test).
set -euo pipefail

user=${PG_USER:-search}
password=${PG_PASSWORD:-search}
db=${PG_DB:-search_test}

log() { echo "postgres.sh: $*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
    log "must run as root (apt-get, pg_ctlcluster)"; exit 1
fi

if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
    log "installing postgresql"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq postgresql >&2
fi

# The newest installed server version (15 on bookworm, 16/17 later): never hard-code it.
version=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
if ! pg_lsclusters -h | awk '{print $1" "$2}' | grep -qx "$version main"; then
    log "creating cluster $version/main"
    pg_createcluster "$version" main >&2
fi
status=$(pg_lsclusters -h | awk -v v="$version" '$1 == v && $2 == "main" {print $4}')
if [ "$status" != "online" ]; then
    log "starting cluster $version/main"
    pg_ctlcluster "$version" main start >&2   # works with and without systemd
fi
port=$(pg_lsclusters -h | awk -v v="$version" '$1 == v && $2 == "main" {print $3}')

for _ in $(seq 1 60); do
    pg_isready -q -h 127.0.0.1 -p "$port" && break
    sleep 0.5
done
pg_isready -h 127.0.0.1 -p "$port" >&2 || { log "server on port $port did not come up"; exit 1; }

psql_admin() { su postgres -c "psql -p $port -v ON_ERROR_STOP=1 -qtA $*" ; }
if [ "$(psql_admin "-c \"SELECT 1 FROM pg_roles WHERE rolname = '$user'\"")" != "1" ]; then
    log "creating role $user"
    psql_admin "-c \"CREATE ROLE \\\"$user\\\" LOGIN PASSWORD '$password'\"" >&2
else
    psql_admin "-c \"ALTER ROLE \\\"$user\\\" LOGIN PASSWORD '$password'\"" >&2
fi
if [ "$(psql_admin "-c \"SELECT 1 FROM pg_database WHERE datname = '$db'\"")" != "1" ]; then
    log "creating database $db"
    psql_admin "-c \"CREATE DATABASE \\\"$db\\\" OWNER \\\"$user\\\"\"" >&2
fi
# pg_stat_activity shows other roles' sessions only to superusers or pg_read_all_stats members;
# CREATEDB lets each test use a database of its own (and count its connections alone).
psql_admin "-c \"GRANT pg_read_all_stats TO \\\"$user\\\"\"" >&2
psql_admin "-c \"ALTER ROLE \\\"$user\\\" CREATEDB\"" >&2

url="postgresql://$user:$password@127.0.0.1:$port/$db"
log "ready: $url (max_connections $(psql_admin "-c 'SHOW max_connections'"))"
echo "export SEARCH_TEST_POSTGRES=$url"
