# Shared by the scripts: install what they need when it is missing.

# Installs the Debian packages nats-server and redis-server if their
# binaries are not on PATH, and chromium with its chromedriver (the status
# page's browser test).
ensure_services_installed() {
  ensure_commands nats-server redis-server chromium chromedriver:chromium-driver
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
