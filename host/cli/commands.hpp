// The cufm subcommands (host/cli/commands.cpp): each runs after parse_command_line has checked its
// arguments, and reports failure as a cufm::Error.
#pragma once

#include "host/cli/args.hpp"

namespace cufm::cli {

int run_train(const TrainArgs& a);
int run_sample(const SampleArgs& a);
int run_velocity(const VelocityArgs& a);
int run_logprob(const LogProbArgs& a);
int run_eval(const EvalArgs& a);
int run_info();

}  // namespace cufm::cli
