# Sourced by the scripts that build on the lent GPU machine (gpu_pending.sh, bench_attention_ab.sh):
# where Eigen's headers are missing there, the Debian packages carried in build-deps/ (downloaded
# where the repository is: see gpu_pending.sh's header) are unpacked into /tmp/deps, and
# `deps_prefix` holds the CMake arguments that find them (empty where the system has them).
# configure_release SOURCE BUILD LOG: a Release CUDA build folder with benchmarks (Ninja), or exit.
deps_prefix=()
if [ ! -d /usr/include/eigen3 ] && compgen -G "build-deps/*.deb" >/dev/null; then
  mkdir -p /tmp/deps
  for d in build-deps/*.deb; do dpkg -x "$d" /tmp/deps; done
  deps_prefix=(-DCMAKE_PREFIX_PATH=/tmp/deps/usr -DEigen3_DIR=/tmp/deps/usr/share/eigen3/cmake)
  export LD_LIBRARY_PATH=/tmp/deps/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
fi

configure_release() {
  cmake -S "$1" -B "$2" -G Ninja -DCMAKE_BUILD_TYPE=Release -DKILN_CUDA=ON -DKILN_BUILD_BENCHMARKS=ON \
    "${deps_prefix[@]}" > "$3" 2>&1 || { tail "$3"; exit 1; }
}
