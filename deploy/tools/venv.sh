# shellcheck shell=bash
# The deploy checks' virtualenv, shared by scripts/check-deploy and
# scripts/test-compose-topology. Source it after scripts/lib.sh.

# deploy_venv: creates $CONVEYOR_TMP/venv-deploy with deploy/tools/requirements.txt
# installed, at most once per change of that file; prints the venv's python.
deploy_venv() {
  local root=$1 venv="${CONVEYOR_TMP:-/tmp/conveyor-test}/venv-deploy"
  local req="$root/deploy/tools/requirements.txt" stamp want
  if [[ ! -x $venv/bin/python ]]; then
    if ! python3 -m venv "$venv" >&2; then
      rm -rf "$venv"
      apt_install python3-venv
      python3 -m venv "$venv" >&2
    fi
  fi
  # The stamp holds the file's hash, not its path: another checkout (CI's
  # clone) with other requirements must not pass for this one.
  stamp="$venv/.requirements.stamp"
  want=$(sha256sum <"$req")
  if [[ $(cat "$stamp" 2>/dev/null) != "$want" ]]; then
    log "installing the deploy tools into $venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$req" >&2
    printf '%s\n' "$want" >"$stamp"
  fi
  printf '%s\n' "$venv/bin/python"
}

# deploy_venv_sdk ROOT: also installs the Python SDK from clients/python
# (editable: source edits need no reinstall; a pyproject.toml change does).
deploy_venv_sdk() {
  local root=$1 python venv stamp want
  python=$(deploy_venv "$root")
  venv=$(dirname "$(dirname "$python")")
  # Editable installs point at one checkout: reinstall for another one, or
  # when its pyproject.toml changed.
  stamp="$venv/.sdk.stamp"
  want="$root/clients/python $(sha256sum <"$root/clients/python/pyproject.toml")"
  if [[ $(cat "$stamp" 2>/dev/null) != "$want" ]]; then
    log "installing the Python SDK ($root/clients/python) into $venv"
    "$python" -m pip install -q --disable-pip-version-check -e "$root/clients/python" >&2
    printf '%s\n' "$want" >"$stamp"
  fi
  printf '%s\n' "$python"
}
