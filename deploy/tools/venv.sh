# shellcheck shell=bash
# The deploy checks' virtualenv, shared by scripts/check-deploy and
# scripts/test-compose-topology. Source it after scripts/lib.sh.

# deploy_venv: creates $CONVEYOR_TMP/venv-deploy with deploy/tools/requirements.txt
# installed, at most once per change of that file; prints the venv's python.
deploy_venv() {
  local root=$1 venv="${CONVEYOR_TMP:-/tmp/conveyor-test}/venv-deploy"
  local req="$root/deploy/tools/requirements.txt" stamp
  if [[ ! -x $venv/bin/python ]]; then
    if ! python3 -m venv "$venv" >&2; then
      rm -rf "$venv"
      apt_install python3-venv
      python3 -m venv "$venv" >&2
    fi
  fi
  stamp="$venv/.requirements.sha256"
  if [[ ! -f $stamp ]] || ! sha256sum --status -c "$stamp" 2>/dev/null; then
    log "installing the deploy tools into $venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$req" >&2
    sha256sum "$req" >"$stamp"
  fi
  printf '%s\n' "$venv/bin/python"
}

# deploy_venv_sdk ROOT: also installs the Python SDK from clients/python
# (editable: source edits need no reinstall; a pyproject.toml change does).
deploy_venv_sdk() {
  local root=$1 python venv stamp
  python=$(deploy_venv "$root")
  venv=$(dirname "$(dirname "$python")")
  stamp="$venv/.sdk.sha256"
  if [[ ! -f $stamp ]] || ! sha256sum --status -c "$stamp" 2>/dev/null; then
    log "installing the Python SDK (clients/python) into $venv"
    "$python" -m pip install -q --disable-pip-version-check -e "$root/clients/python" >&2
    sha256sum "$root/clients/python/pyproject.toml" >"$stamp"
  fi
  printf '%s\n' "$python"
}
