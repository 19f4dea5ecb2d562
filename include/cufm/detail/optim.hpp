// The optimiser's configuration as the shared update (hd::adam_coeffs, hd::adam_update) reads it
// (internal), for the CPU backend and the Adam kernels alike.
#pragma once

#include "cufm/detail/math.hpp"
#include "cufm/trainer.hpp"

namespace cufm::hd {

inline AdamHyper adam_hyper(const OptimConfig& o) {
  AdamHyper h{o.lr,           o.beta1,     o.beta2,     o.eps,
              o.weight_decay, o.grad_clip, o.ema_decay, o.kind == Optimizer::AdamW};
  h.schedule = o.lr_schedule;
  h.warmup_steps = o.warmup_steps;
  h.decay_steps = o.decay_steps;
  h.min_lr = o.min_lr;
  return h;
}

}  // namespace cufm::hd
