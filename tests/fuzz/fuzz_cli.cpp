// Fuzz target: the cufm command line's parsing and checking (cufm::cli::parse_command_line) on
// arbitrary argument lists: the input's bytes split at '\0' or '\n' into arguments after "cufm".
// Any input must parse or give a cufm::Error (or a help text); nothing runs, and nothing is written.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "cufm/error.hpp"
#include "host/cli/args.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::vector<std::string> args = {"cufm"};
  std::string cur;
  for (size_t i = 0; i < size; ++i) {
    const char c = static_cast<char>(data[i]);
    if (c == '\0' || c == '\n') {
      args.push_back(cur);
      cur.clear();
    } else {
      cur.push_back(c);
    }
  }
  if (!cur.empty()) args.push_back(cur);
  if (args.size() > 64) return 0;
  std::vector<const char*> argv;
  for (const std::string& a : args) argv.push_back(a.c_str());
  try {
    (void)cufm::cli::parse_command_line(static_cast<int>(argv.size()), argv.data());
  } catch (const cufm::Error&) {
  } catch (const cufm::cli::HelpRequested&) {
  }
  return 0;
}
