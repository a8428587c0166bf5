#!/bin/sh
# A cluster in $PGDATA on first start, with the official image's POSTGRES_USER, POSTGRES_PASSWORD and POSTGRES_DB;
# then PostgreSQL itself as PID 1 (exec), so that the container's stop signal reaches it.
set -eu
bin=$(echo /usr/lib/postgresql/*/bin)
user=${POSTGRES_USER:-postgres}
db=${POSTGRES_DB:-$user}
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    : "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD is required for a new cluster}"
    pwfile=$(mktemp)  # the password by file, never on a command line that ps shows
    printf '%s' "$POSTGRES_PASSWORD" > "$pwfile"
    "$bin/initdb" -D "$PGDATA" -U "$user" --pwfile="$pwfile" --auth-local=trust --auth-host=scram-sha-256
    rm -f "$pwfile"
    # Other containers connect over the network: a password for every address.
    echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
    if [ "$db" != postgres ]; then
        "$bin/pg_ctl" -D "$PGDATA" -w -o "-c listen_addresses=''" start
        "$bin/psql" -v ON_ERROR_STOP=1 -U "$user" -d postgres -c "CREATE DATABASE \"$db\""
        "$bin/pg_ctl" -D "$PGDATA" -w stop
    fi
fi
exec "$bin/postgres" -D "$PGDATA" -c listen_addresses='*'
