// TEMPORARY until the vector path lands: forwards to the scalar path.
#include "cpu/fused_linear.h"
namespace bigperf::cpu {
void fused_linear_avx2(const FusedLinearArgs& a) { fused_linear_scalar(a); }
}  // namespace bigperf::cpu
