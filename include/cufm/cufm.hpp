// The whole cuFM C++ API.
#pragma once

#include "cufm/checkpoint.hpp"
#include "cufm/config.hpp"
#include "cufm/coupling.hpp"
#include "cufm/dataset.hpp"
#include "cufm/device.hpp"
#include "cufm/error.hpp"
#include "cufm/likelihood.hpp"
#include "cufm/loss.hpp"
#include "cufm/math.hpp"
#include "cufm/metrics.hpp"
#include "cufm/model.hpp"
#include "cufm/names.hpp"
#include "cufm/path.hpp"
#include "cufm/sampler.hpp"
#include "cufm/trainer.hpp"
#include "cufm/velocity.hpp"
