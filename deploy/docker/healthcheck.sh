#!/bin/bash
# healthcheck VAR [PATH] [DEFAULT] — the images' HEALTHCHECK: GET PATH (default /healthz)
# from the listener whose address (host:port) is in environment variable VAR (e.g.
# GATEWAY_ADMIN_LISTEN), or DEFAULT when VAR is unset; exit 0 only on an HTTP 200.
# A wildcard bind (0.0.0.0, [::], empty host) is reached on 127.0.0.1. Plain bash
# (/dev/tcp), so the images need no curl or wget.
set -euo pipefail

var="${1:?usage: healthcheck VAR [PATH] [DEFAULT]}"
path="${2:-/healthz}"
listen="${!var:-${3:-}}"
[[ "$listen" == *:* ]] || { echo "healthcheck: $var is not host:port: '$listen'" >&2; exit 1; }
port="${listen##*:}"
host="${listen%:*}"
host="${host#[}"
host="${host%]}"
case "$host" in
  "" | 0.0.0.0 | "::") host=127.0.0.1 ;;
esac

exec 3<>"/dev/tcp/$host/$port"
printf 'GET %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n' "$path" >&3
status=""
IFS= read -r -t 5 status <&3 || true
exec 3<&-
if [[ "$status" =~ ^HTTP/1\.[01]\ 200[[:space:]] ]]; then
  exit 0
fi
echo "healthcheck: GET http://$host:$port$path answered '${status%$'\r'}'" >&2
exit 1
