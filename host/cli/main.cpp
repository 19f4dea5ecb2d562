// The cufm command-line tool: train, sample, velocity, logprob, eval, info. Every failure is one line on
// stderr and a non-zero exit (the source location only with --verbose); outputs are written to temporary
// names and renamed into place.
#include <cstdio>
#include <exception>
#include <string>

#include "cufm/device.hpp"
#include "cufm/error.hpp"
#include "host/cli/args.hpp"
#include "host/cli/commands.hpp"

namespace {

void print_error(const std::string& message) {
  std::string line = message;
  for (char& ch : line) {
    if (ch == '\n' || ch == '\r') ch = ' ';
  }
  std::fprintf(stderr, "cufm: error: %s\n", line.c_str());
}

}  // namespace

int main(int argc, char** argv) {
  cufm::bound_cpu_thread_spinning(argc, argv);  // may execute the program again, before any work
  bool verbose = false;
  for (int i = 1; i < argc; ++i) verbose = verbose || std::string(argv[i]) == "--verbose";
  try {
    const cufm::cli::Command cmd = cufm::cli::parse_command_line(argc, argv);
    switch (cmd.kind) {
      case cufm::cli::Command::Kind::Train:
        return cufm::cli::run_train(cmd.train);
      case cufm::cli::Command::Kind::Sample:
        return cufm::cli::run_sample(cmd.sample);
      case cufm::cli::Command::Kind::Velocity:
        return cufm::cli::run_velocity(cmd.velocity);
      case cufm::cli::Command::Kind::LogProb:
        return cufm::cli::run_logprob(cmd.logprob);
      case cufm::cli::Command::Kind::Eval:
        return cufm::cli::run_eval(cmd.eval);
      default:
        return cufm::cli::run_info();
    }
  } catch (const cufm::cli::HelpRequested& h) {
    std::fputs(h.text.c_str(), stdout);
    return 0;
  } catch (const cufm::Error& e) {
    print_error(verbose ? e.what() : e.message());
  } catch (const std::bad_alloc&) {
    print_error(
        "out of memory (a size estimate missed this allocation: please report it with the command line)");
  } catch (const std::exception& e) {
    print_error(e.what());
  }
  return 1;
}
