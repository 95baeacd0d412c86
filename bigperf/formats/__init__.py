"""bigperf's weight formats, one module each: what a layer holds, how it is packed and
unpacked (and its version), its buffer names and eligibility, its ONNX lowering, and the
candidate paths that compute with it on each device (registered into the ops' backend
tables by bigperf/ops). The ops (bigperf/ops) define schemas, validation and references;
the layers (bigperf/nn) hold one format and call its op.

    dense            FusedLinear's float weight (fused_linear)
    int8_rowmajor    int8 codes per channel / group (int8_weight_linear, int8_dynamic_linear)
    w8a16_cuda       the CUDA W8A16 kernel's tile order of int8_rowmajor
    w8a8_cpu         the CPU W8A8 kernels' panel order of int8_rowmajor
    w8a16_cpu        the CPU W8A16 kernels' panel order of int8_rowmajor
    sparse24         2:4 values + metadata, float or int8 (sparse24_linear)
    sparse24_lanes   the CPU lane layout of sparse24
    bsr              block-sparse rows (block_sparse_linear)
    bsr_lanes        the CPU lane layout of bsr
"""

# The ops import the formats to register their paths: load the ops first, so that a format
# module is never half-initialised when an op module asks it to register.
import bigperf.ops  # noqa: E402,F401
