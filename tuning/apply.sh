#!/usr/bin/env bash
# Apply 99-ringway.conf now (not persistently) and print each change.
#   ./apply.sh            apply (needs root)
#   ./apply.sh --dry-run  only show what would change
# To make it persistent: cp 99-ringway.conf /etc/sysctl.d/ && sysctl --system
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
conf="$here/99-ringway.conf"
dry=0
[ "${1:-}" = "--dry-run" ] && dry=1
if [ "$dry" = 0 ] && [ "$(id -u)" != 0 ]; then
  echo "apply.sh: needs root (or use --dry-run)" >&2
  exit 2
fi
changed=0
failed=0
trim() { local s="$*"; s="${s#"${s%%[![:space:]]*}"}"; printf '%s' "${s%"${s##*[![:space:]]}"}"; }
squeeze() { tr -s ' \t' '  ' | sed 's/^ //; s/ $//'; }
while IFS='=' read -r key value; do
  key="$(trim "$key")"
  case "$key" in ''|'#'*) continue ;; esac
  value="$(trim "$value" | squeeze)"
  now="$(sysctl -n "$key" 2>/dev/null | squeeze || true)"
  if [ -z "$now" ]; then
    echo "skip   $key (not on this kernel)"
    continue
  fi
  if [ "$now" = "$value" ]; then
    echo "ok     $key = $now"
    continue
  fi
  if [ "$dry" = 1 ]; then
    echo "would  $key: $now -> $value"
  elif sysctl -q -w "$key=$value" >/dev/null 2>&1; then
    echo "set    $key: $now -> $value"
    changed=$((changed + 1))
  else
    echo "FAILED $key: $now -> $value (read-only here, e.g. in a container)"
    failed=$((failed + 1))
  fi
done < "$conf"
echo "open files for this shell: soft $(ulimit -Sn), hard $(ulimit -Hn) (ringway raises soft to hard; set LimitNOFILE in its unit)"
echo "$changed changed, $failed failed"
[ "$failed" = 0 ]
