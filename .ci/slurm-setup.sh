#!/usr/bin/env bash
# SLURM for tests/test_hpc.py and benchmarks/bench_slurm.py (issue #18): installs Debian's
# slurm-wlm and munge when sbatch / slurmctld / slurmd / munged are missing. Nothing is started
# or configured system-wide: the tests start a private single-node cluster of their own
# (tests/slurm.py: munged, slurmctld and slurmd as root in a temporary folder, on free loopback
# ports, found through SLURM_CONF) and stop it after. With --check, also starts one such
# cluster, runs a job and stops it, to say early whether the SLURM tests will run or skip.
# Never fails the CI run: a SLURM that cannot be installed or started makes those tests skip,
# saying why.
set -uo pipefail
cd "$(dirname "$0")/.."

have_all() {
    command -v sbatch >/dev/null 2>&1 && command -v slurmctld >/dev/null 2>&1 \
        && command -v slurmd >/dev/null 2>&1 && command -v munged >/dev/null 2>&1
}

if ! have_all; then
    if command -v apt-get >/dev/null 2>&1; then
        SUDO=""
        [ "$(id -u)" -eq 0 ] || SUDO="sudo -n"
        echo "ci: installing slurm-wlm and munge" >&2
        ($SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq slurm-wlm munge >/dev/null) \
            || echo "ci: could not install slurm-wlm / munge (the SLURM tests will skip)" >&2
    else
        echo "ci: no apt-get: SLURM not installed (the SLURM tests will skip)" >&2
    fi
fi

if [ "${1:-}" = "--check" ] && have_all; then
    py=".venv/bin/python"
    [ -x "$py" ] || py="python3"
    "$py" tests/slurm.py --check >&2 || echo "ci: a private SLURM did not start (the SLURM tests will skip)" >&2
fi
exit 0
