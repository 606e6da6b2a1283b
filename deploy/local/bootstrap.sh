# Sourced by run.sh and test.sh: a virtualenv with genrelay installed, and the servers provisioned.
# Safe to repeat: the install is redone only when pyproject.toml changes.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
venv="$repo/.venv"
python=${PYTHON:-python3}

if [[ ! -x $venv/bin/python ]]; then
  echo "bootstrap: creating virtualenv $venv" >&2
  "$python" -m venv "$venv"
fi
want=$(sha256sum "$repo/pyproject.toml" | cut -d' ' -f1)
stamp="$venv/.genrelay-installed"
if [[ ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
  echo "bootstrap: installing genrelay and its dependencies into $venv" >&2
  # The build backend talks a lot even with -q; its log is kept, and shown only on failure.
  log="$venv/install.log"
  if ! { "$venv/bin/python" -m pip install --disable-pip-version-check --upgrade pip \
      && "$venv/bin/python" -m pip install --disable-pip-version-check -e "$repo[dev]"; } >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "bootstrap: installing failed; full log in $log" >&2
    exit 1
  fi
  printf '%s' "$want" >"$stamp"
fi
"$repo/deploy/local/provision.sh"
