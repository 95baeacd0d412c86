// The AVX-512 kernel unit on SIMDe (see simde_shim.h).
#include "simde_shim.h"
#include "cpu/int8_linear_avx512.cpp"
