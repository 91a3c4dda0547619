#!/bin/sh
# Entrypoint of the MLflow server image (deploy/mlflow/Dockerfile). docker-compose.yaml hands the
# secrets over as files (POSTGRES_PASSWORD_FILE, MLFLOW_S3_SECRET_KEY_FILE, and for the basic-auth
# app MLFLOW_AUTH_ADMIN_PASSWORD_FILE and MLFLOW_FLASK_SERVER_SECRET_KEY_FILE); this script reads
# them and passes the backend store URI (which embeds the database password), the S3 secret key,
# the first admin's password and the app's CSRF key to `mlflow server` in its environment, which
# MLflow reads (MLFLOW_BACKEND_STORE_URI, AWS_SECRET_ACCESS_KEY, MLFLOW_AUTH_ADMIN_PASSWORD,
# MLFLOW_FLASK_SERVER_SECRET_KEY). So no password is on a command line (`ps`) or in a container
# configuration (`docker inspect`). Without those variables the command runs unchanged, e.g.
# `docker run IMAGE mlflow server --help`.
set -eu

read_secret() {
    # $1: the variable naming the file, $2: its path. Fails loudly on a missing or empty file
    # instead of starting a server that cannot reach its store.
    if [ ! -s "$2" ]; then
        echo "mlflow-entrypoint: $1=$2 is missing or empty (deploy/mlflow/secrets, docs/deploy.md)" >&2
        exit 1
    fi
    cat "$2"
}

if [ -n "${POSTGRES_PASSWORD_FILE:-}" ]; then
    password=$(read_secret POSTGRES_PASSWORD_FILE "$POSTGRES_PASSWORD_FILE")
    # The password goes into a URI unescaped: allow only characters that need no escaping.
    case "$password" in
        *[!A-Za-z0-9_-]*)
            echo "mlflow-entrypoint: the database password may hold only letters, digits, '-' and '_'" >&2
            exit 1
            ;;
    esac
    MLFLOW_BACKEND_STORE_URI="postgresql://${POSTGRES_USER:?set POSTGRES_USER}:${password}@${POSTGRES_HOST:-postgres}:${POSTGRES_PORT:-5432}/${POSTGRES_DB:-mlflow}"
    export MLFLOW_BACKEND_STORE_URI
    unset password
fi

if [ -n "${MLFLOW_S3_SECRET_KEY_FILE:-}" ]; then
    AWS_SECRET_ACCESS_KEY=$(read_secret MLFLOW_S3_SECRET_KEY_FILE "$MLFLOW_S3_SECRET_KEY_FILE")
    export AWS_SECRET_ACCESS_KEY
fi

if [ -n "${MLFLOW_AUTH_ADMIN_PASSWORD_FILE:-}" ]; then
    MLFLOW_AUTH_ADMIN_PASSWORD=$(read_secret MLFLOW_AUTH_ADMIN_PASSWORD_FILE "$MLFLOW_AUTH_ADMIN_PASSWORD_FILE")
    export MLFLOW_AUTH_ADMIN_PASSWORD
fi

if [ -n "${MLFLOW_FLASK_SERVER_SECRET_KEY_FILE:-}" ]; then
    MLFLOW_FLASK_SERVER_SECRET_KEY=$(read_secret MLFLOW_FLASK_SERVER_SECRET_KEY_FILE "$MLFLOW_FLASK_SERVER_SECRET_KEY_FILE")
    export MLFLOW_FLASK_SERVER_SECRET_KEY
fi

exec "$@"
