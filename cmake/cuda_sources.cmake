# The CUDA backend's sources: kernels (each with its launcher) and their host orchestration.
set(CUFM_CUDA_SOURCES
  ${PROJECT_SOURCE_DIR}/kernels/fm_prepare.cu
  ${PROJECT_SOURCE_DIR}/kernels/fm_loss_grad.cu
  ${PROJECT_SOURCE_DIR}/kernels/activation.cu
  ${PROJECT_SOURCE_DIR}/kernels/adam.cu
  ${PROJECT_SOURCE_DIR}/kernels/convert.cu
  ${PROJECT_SOURCE_DIR}/kernels/solver.cu
  ${PROJECT_SOURCE_DIR}/kernels/divergence.cu
  ${PROJECT_SOURCE_DIR}/kernels/ot_coupling.cu
  ${PROJECT_SOURCE_DIR}/kernels/fused_sampler.cu
  ${PROJECT_SOURCE_DIR}/kernels/fused_train.cu
  ${PROJECT_SOURCE_DIR}/host/cuda/device_cuda.cpp
  ${PROJECT_SOURCE_DIR}/host/cuda/lt_mlp.cpp
  ${PROJECT_SOURCE_DIR}/host/cuda/cuda_trainer.cpp
  ${PROJECT_SOURCE_DIR}/host/cuda/cuda_sampler.cpp
  ${PROJECT_SOURCE_DIR}/host/cuda/cuda_field.cpp
  ${PROJECT_SOURCE_DIR}/host/cuda/cuda_loss.cpp
  ${PROJECT_SOURCE_DIR}/host/cuda/cuda_divergence.cpp
  ${PROJECT_SOURCE_DIR}/host/cuda/fm_grad.cpp
  ${PROJECT_SOURCE_DIR}/host/cuda/cuda_backend.cpp
)
# Kernels that must round exactly as the CPU reference (compiled with -ffp-contract=off): no
# contraction of a*b+c into an FMA. The shared math in fm_* uses explicit _rn intrinsics as well,
# so that a plain expression added there later cannot change the bits either.
set_source_files_properties(
  ${PROJECT_SOURCE_DIR}/kernels/fm_prepare.cu
  ${PROJECT_SOURCE_DIR}/kernels/adam.cu
  ${PROJECT_SOURCE_DIR}/kernels/solver.cu
  ${PROJECT_SOURCE_DIR}/kernels/fm_loss_grad.cu
  ${PROJECT_SOURCE_DIR}/kernels/ot_coupling.cu
  ${PROJECT_SOURCE_DIR}/kernels/fused_sampler.cu
  ${PROJECT_SOURCE_DIR}/kernels/fused_train.cu
  PROPERTIES COMPILE_OPTIONS "-fmad=false")
