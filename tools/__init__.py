"""Tools that are not benchmarks: the offline-GPU install kit (gpu_wheels, gpu_check.sh, gpu_smoke)."""
