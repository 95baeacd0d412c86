// Test-only: the AVX-512 sparse-linear unit compiled against SIMDe (see
// ../avx512_emulation/simde_shim.h), so that its logic runs on CPUs without AVX-512.
#include "../avx512_emulation/simde_shim.h"
#include "cpu/sparse_linear_avx512.cpp"
