// Test-only: the AVX-512 fused-linear unit compiled against SIMDe (see
// ../avx512_emulation/simde_shim.h: SIMDe's native aliases, plus plain-C++ versions of the
// intrinsics SIMDe 0.7 lacks), so that its logic runs on CPUs without AVX-512. Its fp16
// loads take F16C's 256-bit conversions too.
#include "../avx512_emulation/simde_shim.h"
#include <simde/x86/f16c.h>

#include "cpu/fused_linear_avx512.cpp"
