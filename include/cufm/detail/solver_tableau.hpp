// A cufm::Solver's fixed-step tableau (internal): the mapping from the public enum to hd's tableaux,
// kept out of detail/math.hpp so that the kernels' common header does not pull in the sampler's API.
#pragma once

#include "cufm/detail/math.hpp"
#include "cufm/sampler.hpp"

namespace cufm::hd {

// A fixed-step solver's tableau; nullptr for Dopri5 (its own controller: hd::dopri5).
inline const FixedTableau* fixed_tableau_of(Solver s) {
  switch (s) {
    case Solver::Euler:
      return &tableau::euler;
    case Solver::Midpoint:
      return &tableau::midpoint;
    case Solver::Heun:
      return &tableau::heun;
    case Solver::RK4:
      return &tableau::rk4;
    default:
      return nullptr;
  }
}

}  // namespace cufm::hd
