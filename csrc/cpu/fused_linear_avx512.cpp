// AVX-512 path of the fused linear (algorithm in fused_linear_kernel.h); x and W both
// bf16 go through vdpbf16ps. Runs only where isa_runnable("avx512") says so.
#include "cpu/fused_linear_kernel.h"
#include "cpu/vec_avx512.h"

namespace bigperf::cpu {

void fused_linear_avx512(const FusedLinearArgs& a) { fused_linear_vec<VecAvx512>(a); }
void fused_linear_panel_avx512(const FusedLinearArgs& a) { fused_linear_panel_vec<VecAvx512>(a); }

}  // namespace bigperf::cpu
