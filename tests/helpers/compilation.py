"""XLA settings of every process the tests start: fake CPU devices and a faster-compiling backend.

The test suite is compile-bound (tiny models, a few steps each, on 2 cores), and much of a compile
is XLA:CPU's LLVM backend optimising the machine code. At backend optimisation level 0 the HLO
passes are unchanged (the optimised HLO of a v3+ train step is byte-identical) and only the machine
code differs, so results may differ in the last bits (that step's loss: 2.0810630 at the default
level, 2.0810628 at 0); tests compare against references with tolerances, and bit-identity tests
compare runs of one setting. The suite takes about 0.7x the time (benchmarks/README.md, "CPU
instruction sets"). Users' processes keep XLA's default level; the benchmarks time with it.
"""

FAST_COMPILE_FLAG = "--xla_backend_optimization_level=0"


def xla_flags(devices):
    """XLA_FLAGS for a test process with `devices` fake CPU devices."""
    return f"--xla_force_host_platform_device_count={devices} {FAST_COMPILE_FLAG}"
