// The enums of the math both backends run: the activations and the learning-rate schedules. The
// math itself (activations and their derivatives, Adam, guidance, the solvers' tableaux) is in
// cufm/detail/math.hpp, shared by the CPU backend and the kernels.
#pragma once

namespace cufm {

enum class Activation : int { SiLU = 0, ReLU = 1, GELU = 2 };
// The learning rate over the steps: a linear warm-up from lr / warmup_steps to lr over the first
// warmup_steps steps, then constant, or a cosine or linear decay to min_lr over decay_steps steps
// (min_lr after them).
enum class LrSchedule : int { Constant = 0, Cosine = 1, Linear = 2 };

}  // namespace cufm
