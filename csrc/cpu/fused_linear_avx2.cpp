// AVX2 + FMA + F16C path of the fused linear (algorithm in fused_linear_kernel.h).
#include "cpu/fused_linear_kernel.h"
#include "cpu/vec_avx2.h"

namespace bigperf::cpu {

void fused_linear_avx2(const FusedLinearArgs& a) { fused_linear_vec<VecAvx2>(a); }
void fused_linear_panel_avx2(const FusedLinearArgs& a) { fused_linear_panel_vec<VecAvx2>(a); }

}  // namespace bigperf::cpu
