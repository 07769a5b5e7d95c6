#!/usr/bin/env bash
# Install the system packages the `server` tests need: PostgreSQL (a real database
# behind the Prefect server) and Chromium (headless screenshots of the Prefect UI).
#
# Idempotent: when both are already installed it does nothing. Needs root (or sudo)
# on Debian/Ubuntu. Usage: scripts/install_system_deps.sh
set -euo pipefail

have_postgres() {
    compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null || command -v postgres >/dev/null
}
have_chromium() {
    command -v chromium >/dev/null || command -v chromium-browser >/dev/null
}

if have_postgres && have_chromium; then
    echo "install_system_deps: postgresql and chromium already installed"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update
# postgresql-common would create and start a default cluster; the tests start their
# own throwaway cluster, so keep the package from creating one.
if [ ! -e /etc/postgresql-common/createcluster.conf ]; then
    $SUDO mkdir -p /etc/postgresql-common/createcluster.d
    echo "create_main_cluster = false" | $SUDO tee /etc/postgresql-common/createcluster.d/pairforge.conf >/dev/null
fi
$SUDO apt-get install -y --no-install-recommends postgresql chromium fonts-liberation

have_postgres && echo "install_system_deps: postgres: $(ls /usr/lib/postgresql/*/bin/postgres | head -1)"
have_chromium && echo "install_system_deps: chromium: $(command -v chromium || command -v chromium-browser)"
