#!/usr/bin/env bash
# Installs what vit needs to build and test, from Debian's packages only. Idempotent: when
# every package is already installed it returns at once, without touching apt.
#   --test  also what only the test suite needs: Chromium, its WebDriver and Selenium (the
#           served page's browser test), wrk (the server's load test)
#   --peer  also the PyTorch peer of tools/bench.py: python3-torch, python3-torchvision and the
#           OpenMP build of OpenBLAS that PyTorch needs to run at its best (../shared/PEERS.md)
set -euo pipefail

peer=() test=()
for arg in "$@"; do
  case "$arg" in
    --peer) peer=(python3-torch python3-torchvision libopenblas0-openmp) ;;
    --test) test=(chromium chromium-driver python3-selenium wrk) ;;
    *) echo "install-deps: unknown option '$arg' (--test, --peer)" >&2; exit 2 ;;
  esac
done

packages=(
  cmake ninja-build g++ pkg-config
  clang-14 libclang-rt-14-dev                     # the fuzzers: libFuzzer and clang's sanitizers
  libdnnl-dev ocl-icd-opencl-dev opencl-c-headers # oneDNN 2.6.3; its CMake config needs OpenCL
  libopencv-dev                                   # the only package that ships OpenCV's CMake config
  libwebp-dev                                     # WebP headers read as OpenCV's decoder reads them
  libboost-program-options-dev
  doctest-dev
  nlohmann-json3-dev
  libcpp-httplib-dev                              # vit serve's HTTP server
  python3 dataset-fashion-mnist                   # the real data, written out as image folders
  python3-matplotlib                              # the plot of tools/compare.py
  "${peer[@]}" "${test[@]}"
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed"; then
    missing+=("$p")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: missing packages (${missing[*]}); run this script as root" >&2
  exit 1
fi
echo "install-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
