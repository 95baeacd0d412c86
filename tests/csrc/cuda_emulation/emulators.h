// The host emulators of the CUDA kernels (test code, built by tests/cuda_emulators.py into
// the _cuda_emulators module, never into bigperf._C_cuda). Each runs its kernel's own index
// maps (csrc/cuda/*_tile.h) on the CPU with HOST pointers, against models of cp.async,
// ldmatrix, mma and mma.sp written from the PTX ISA (mma_emulate.h), so that layout bugs
// show up without a GPU. They validate their arguments as the launchers do
// (csrc/cuda/kernel_plans.cpp) but need the configuration (and W8A16's K split) given.
#pragma once
#include "cuda/cuda_api.h"

namespace bigperf::cuda {

// Tiles, cp.async chunks, swizzle, ldmatrix addresses, mma fragments, staged epilogue.
void fused_linear_emulate(const FusedLinearArgs& args);
// As above plus the register dequantisation and the split-K workspace/counter protocol
// (the partials go through `workspace` / `counters` exactly as on the device).
void w8a16_emulate(const W8A16Args& args);
// mma.sp fragments and metadata registers (invalid metadata is an error).
void s24_emulate(const S24Args& args);

}  // namespace bigperf::cuda
