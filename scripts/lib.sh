# Shared by run-demo.sh and run-static.sh (sourced).

# require_free_ports PORT...: ends the script when one of them is taken on 127.0.0.1.
require_free_ports() {
  local port
  for port in "$@"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "port $port on 127.0.0.1 is taken: this needs $* (is another demo running?)" >&2
      exit 1
    fi
  done
}
