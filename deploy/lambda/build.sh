#!/usr/bin/env bash
# Build an AWS Lambda deployment package (a .zip) of sluicegate, its dependencies and a project.
#
#   deploy/lambda/build.sh --project path/to/project [--out build/lambda/sluicegate-lambda.zip]
#                          [--arch x86_64|aarch64] [--extras fast]
#
# Dependencies are installed for the Lambda runtime, not for this machine: CPython 3.11,
# manylinux2014 wheels only (glibc 2.17, which the python3.11 runtime on Amazon Linux 2 can
# load), so nothing is compiled here and the zip works whatever this machine runs.
# The project folder (sluicegate.toml and tasks/) goes to project/ in the zip, where the handler
# looks by default ($LAMBDA_TASK_ROOT/project). Keep secrets out of it: give the database URLs
# and tokens to the function as environment variables (SLUICEGATE_SOURCE__URL, ...).
# The handler to set on the function is sluicegate.aws_lambda.handler.
# The zip is reproducible: files in sorted order, fixed timestamps.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
python="${PYTHON:-python3}"
project=""
out="$repo/build/lambda/sluicegate-lambda.zip"
arch="x86_64"
extras="fast"
limit=$((250 * 1024 * 1024))  # Lambda's limit for a function and its layers, unzipped

usage() { sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "build.sh: $*" >&2; exit 2; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --project) project="${2:?--project needs a folder}"; shift 2 ;;
        --out) out="${2:?--out needs a file name}"; shift 2 ;;
        --arch) arch="${2:?--arch needs x86_64 or aarch64}"; shift 2 ;;
        --extras) extras="${2?--extras needs a value (may be empty)}"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument '$1'" ;;
    esac
done
case "$arch" in
    x86_64|aarch64) ;;
    *) die "--arch '$arch' is not a Lambda architecture; use x86_64 or aarch64" ;;
esac
if [[ -n "$project" && ! -f "$project/sluicegate.toml" ]]; then
    die "--project '$project' has no sluicegate.toml; give the project folder (sluicegate init creates one)"
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
package="$work/package"

echo "build.sh: building the sluicegate wheel" >&2
"$python" -m pip wheel --quiet --no-deps --wheel-dir "$work/wheel" "$repo"
wheel="$(ls "$work"/wheel/sluicegate-*.whl)"
spec="$wheel"
[[ -n "$extras" ]] && spec="sluicegate[$extras] @ file://$wheel"

echo "build.sh: installing it with its dependencies for CPython 3.11 on manylinux2014_$arch" >&2
"$python" -m pip install --quiet --disable-pip-version-check --no-compile \
    --target "$package" \
    --platform "manylinux2014_$arch" --implementation cp --python-version 3.11 --abi cp311 \
    --only-binary=:all: \
    "$spec"

# pip records the wheel's temporary path; drop it, so the same sources give the same zip.
rm -f "$package"/sluicegate-*.dist-info/direct_url.json
sed -i '/direct_url\.json/d' "$package"/sluicegate-*.dist-info/RECORD
# What the function never imports: bytecode caches, C headers and test suites.
find "$package" -name __pycache__ -type d -prune -exec rm -rf {} +
rm -rf "$package"/pyarrow/include "$package"/pyarrow/tests "$package"/bin
find "$package" \( -name '*.pyx' -o -name '*.pxd' -o -name '*.pxi' \) -delete

if [[ -n "$project" ]]; then
    mkdir -p "$package/project"
    cp -R "$project"/sluicegate.toml "$project"/tasks "$package/project/"
else
    echo "build.sh: WARNING: no --project: set SLUICEGATE_PROJECT on the function to a folder it can read" >&2
fi

size="$(du -sb "$package" | cut -f1)"
if (( size > limit )); then
    die "the package is $((size / 1024 / 1024)) MiB unzipped, over Lambda's 250 MiB; use the container image (deploy/lambda/Dockerfile)"
fi

mkdir -p "$(dirname "$out")"
rm -f "$out"
"$python" - "$package" "$out" <<'PY'
import os, sys, zipfile

root, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(folder, name)
            info = zipfile.ZipInfo(os.path.relpath(path, root), date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = (0o755 if os.access(path, os.X_OK) else 0o644) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            with open(path, "rb") as f:
                zf.writestr(info, f.read())
PY
echo "build.sh: wrote $out ($(( $(stat -c %s "$out") / 1024 / 1024 )) MiB zipped, $((size / 1024 / 1024)) MiB unzipped)" >&2
echo "build.sh: handler: sluicegate.aws_lambda.handler; runtime: python3.11; architecture: $arch" >&2
