#!/usr/bin/env bash
# Apply 99-ringway.conf now (not persistently) and print each change; never
# lowers what the host already has higher unless told to. `apply.sh --help`
# says how. To make it persistent instead, see the top of 99-ringway.conf.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: apply.sh [--dry-run] [--allow-lower] [--sysctl-root DIR] [--conf FILE]

Apply tuning/99-ringway.conf to the running kernel (not persistently) and
print one line per setting:
  ok     KEY = VALUE             the host has it already
  set    KEY: OLD -> NEW         changed (would: only shown, with --dry-run)
  keep   KEY: host value X is higher than Y
                                 the host has more already: left as it is
  lower  KEY: X -> Y             lowered, only with --allow-lower
  skip   KEY                     not on this kernel
  FAILED KEY                     could not be written (e.g. in a container)

A value is never lowered unless --allow-lower is given: a larger limit,
queue, buffer or file count, a wider local port range (a lower first port),
sooner keepalive probes (a shorter tcp_keepalive_time). Multi-value keys
(tcp_rmem, tcp_wmem, tcp_mem, ip_local_port_range) are compared field by
field; ip_local_reserved_ports is merged with the host's list;
tcp_tw_reuse, a mode rather than an amount, is set as written.

Options:
  -n, --dry-run        only show what would change; needs no root
      --allow-lower    also apply values lower than the host's
      --sysctl-root DIR
                       read and write DIR/net/core/somaxconn and so on
                       instead of /proc/sys (a copy, a container's image,
                       or a test); needs no root
      --conf FILE      apply FILE instead of the 99-ringway.conf next to
                       this script (KEY = VALUE lines, # comments)
  -h, --help           print this and exit

Exit status: 0 when every setting is applied (or only shown), 1 when one
could not be written, 2 for a usage error (nothing is applied then).
EOF
}

usage_error() {
  echo "apply.sh: $1" >&2
  usage >&2
  exit 2
}

dry=0
allow_lower=0
root=/proc/sys
conf="$(cd "$(dirname "$0")" && pwd)/99-ringway.conf"
while [ $# -gt 0 ]; do
  case "$1" in
    -n | --dry-run) dry=1 ;;
    --allow-lower) allow_lower=1 ;;
    --sysctl-root)
      [ $# -ge 2 ] || usage_error "--sysctl-root needs a directory"
      root="$2"
      shift
      ;;
    --sysctl-root=*) root="${1#*=}" ;;
    --conf)
      [ $# -ge 2 ] || usage_error "--conf needs a file"
      conf="$2"
      shift
      ;;
    --conf=*) conf="${1#*=}" ;;
    -h | --help)
      usage
      exit 0
      ;;
    *) usage_error "unknown argument: '$1'" ;;
  esac
  shift
done
if [ -z "$root" ] || [ ! -d "$root" ]; then
  usage_error "--sysctl-root: '$root' is not a directory"
fi
if [ ! -r "$conf" ] || [ -d "$conf" ]; then
  usage_error "--conf: cannot read '$conf'"
fi
if [ "$dry" = 0 ] && [ "$root" = /proc/sys ] && [ "$(id -u)" != 0 ]; then
  echo "apply.sh: needs root (or use --dry-run)" >&2
  exit 2
fi

trim() { local s="$*"; s="${s#"${s%%[![:space:]]*}"}"; printf '%s' "${s%"${s##*[![:space:]]}"}"; }
squeeze() { tr -s ' \t' '  ' | sed 's/^ //; s/ $//'; }
is_num() { case "$1" in '' | *[!0-9]*) return 1 ;; *) return 0 ;; esac; }
# Compare two non-negative integers of any length (some sysctls hold
# 2^64-1, past bash's arithmetic): prints -1, 0 or 1.
num_cmp() {
  local a="$1" b="$2"
  a="${a#"${a%%[!0]*}"}"
  b="${b#"${b%%[!0]*}"}"
  if [ "${#a}" != "${#b}" ]; then
    [ "${#a}" -lt "${#b}" ] && echo -1 || echo 1
  elif [ "$a" = "$b" ]; then
    echo 0
  elif [[ "$a" < "$b" ]]; then
    echo -1
  else
    echo 1
  fi
}

# Which way is "more" for each field of a key: max (larger is more, the
# default), min (smaller is more), set (a mode, not an amount: the file's
# value is applied as is), union (a list: the host's entries are kept).
# The last word covers the remaining fields.
direction() {
  case "$1" in
    net.ipv4.ip_local_port_range) echo "min max" ;; # a lower first port: a wider range
    net.ipv4.tcp_keepalive_time) echo "min" ;;      # probing sooner
    net.ipv4.tcp_tw_reuse) echo "set" ;;            # 0 off, 1 on, 2 loopback only
    net.ipv4.ip_local_reserved_ports) echo "union" ;;
    *) echo "max" ;;
  esac
}

# Merge two comma-separated lists, the host's first.
union() {
  local out="$1" item
  local -a items
  IFS=',' read -r -a items <<<"$2"
  for item in "${items[@]}"; do
    item="$(trim "$item")"
    [ -n "$item" ] || continue
    case ",$out," in *",$item,"*) continue ;; esac
    out="${out:+$out,}$item"
  done
  printf '%s' "$out"
}

# Decide the value to write for $key, from the host's $now and the file's
# $want; prints keep/lower lines and sets $target. Fails when the two
# cannot be compared (the key is then left alone).
decide() {
  local key="$1" now="$2" want="$3"
  local -a dirs nows wants out
  read -r -a dirs <<<"$(direction "$key")"
  target=""
  case "${dirs[0]}" in
    set)
      target="$want"
      return
      ;;
    union)
      target="$(union "$now" "$want")"
      return
      ;;
  esac
  read -r -a nows <<<"$now"
  read -r -a wants <<<"$want"
  if [ "${#nows[@]}" != "${#wants[@]}" ]; then
    echo "skip   $key: the host's value '$now' has ${#nows[@]} field(s), the file's '$want' ${#wants[@]}"
    return 1
  fi
  local i n="${#wants[@]}" dir cmp field higher
  for ((i = 0; i < n; i++)); do
    dir="${dirs[$i]:-${dirs[${#dirs[@]} - 1]}}"
    out[i]="${wants[$i]}"
    if ! is_num "${nows[$i]}" || ! is_num "${wants[$i]}"; then
      continue
    fi
    cmp="$(num_cmp "${nows[$i]}" "${wants[$i]}")"
    # Would the file's value give less than the host has?
    if [ "$dir" = max ] && [ "$cmp" = 1 ]; then
      higher="higher"
    elif [ "$dir" = min ] && [ "$cmp" = -1 ]; then
      higher="lower (lower is more here)"
    else
      continue
    fi
    field=""
    [ "$n" = 1 ] || field=" (field $((i + 1)) of $n)"
    if [ "$allow_lower" = 1 ]; then
      echo "lower  $key: ${nows[$i]} -> ${wants[$i]}$field (--allow-lower)"
    else
      echo "keep   $key: host value ${nows[$i]} is $higher than ${wants[$i]}$field"
      out[i]="${nows[$i]}"
      kept=$((kept + 1))
    fi
  done
  target="${out[*]}"
}

changed=0
failed=0
kept=0
while IFS="=" read -r key value || [ -n "$key" ]; do
  key="$(trim "$key")"
  case "$key" in '' | '#'*) continue ;; esac
  value="$(trim "$value" | squeeze)"
  file="$root/${key//.//}"
  if [ ! -f "$file" ] || ! now="$(squeeze <"$file" 2>/dev/null)"; then
    echo "skip   $key (not on this kernel)"
    continue
  fi
  decide "$key" "$now" "$value" || continue
  if [ "$now" = "$target" ]; then
    echo "ok     $key = $now"
    continue
  fi
  if [ "$dry" = 1 ]; then
    echo "would  $key: $now -> $target"
  elif { printf '%s\n' "$target" >"$file"; } 2>/dev/null; then
    echo "set    $key: $now -> $target"
    changed=$((changed + 1))
  else
    echo "FAILED $key: $now -> $target (read-only here, e.g. in a container)"
    failed=$((failed + 1))
  fi
done <"$conf"
echo "open files for this shell: soft $(ulimit -Sn), hard $(ulimit -Hn) (ringway raises soft to hard; set LimitNOFILE in its unit)"
summary="$changed changed, $failed failed, $kept kept"
[ "$kept" = 0 ] || summary="$summary (the host has more; --allow-lower would lower them)"
[ "$dry" = 0 ] || summary="$summary; dry run: nothing changed"
echo "$summary"
[ "$failed" = 0 ]
