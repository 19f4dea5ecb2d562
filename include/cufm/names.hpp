// Every enum's names, in one table per enum: its values, the names the CLI, checkpoints and Python
// read and write, and a line of help for each. to_string, the parse_* functions, the CLI's choices
// and help, the checkpoint's fields and the Python binding all read these tables (host/names.cpp),
// so a new solver or schedule is one row there, and a name cannot differ between them.
#pragma once

#include <cstddef>
#include <string>

#include "cufm/coupling.hpp"
#include "cufm/device.hpp"
#include "cufm/math.hpp"
#include "cufm/path.hpp"
#include "cufm/sampler.hpp"
#include "cufm/trainer.hpp"

namespace cufm {

template <class E>
struct EnumEntry {
  E value;
  const char* name;   // what to_string writes and parse reads (lower case)
  const char* help;   // a short phrase for the CLI's help and the Python docstrings
  const char* alias;  // another name parse accepts ("gpu" for cuda), or nullptr
};

template <class E>
struct EnumTable {
  const char* what;  // what the enum names, for messages: "solver", "learning-rate schedule"
  const EnumEntry<E>* entries;
  size_t size;
  const EnumEntry<E>* begin() const { return entries; }
  const EnumEntry<E>* end() const { return entries + size; }
};

// The table of E; defined for Activation, LrSchedule, TimeSampling, Optimizer, Device, Precision,
// Solver, Divergence and Coupling.
template <class E>
const EnumTable<E>& enum_table();

// The value's name ("unknown" for a value outside the table).
template <class E>
const char* enum_name(E value) {
  for (const EnumEntry<E>& e : enum_table<E>()) {
    if (e.value == value) return e.name;
  }
  return "unknown";
}

// The value named s (its name or alias, in any case); throws cufm::Error "unknown <what> 's':
// expected a, b or c" otherwise.
template <class E>
E enum_parse(const std::string& s);

// "a, b or c": the names, for messages and the CLI's help.
template <class E>
std::string enum_choices();

// "a (help), b (help) or c (help)": the names with their help.
template <class E>
std::string enum_help();

// Whether value is one of the table's (an enum cast from an int may not be).
template <class E>
bool enum_valid(E value) {
  for (const EnumEntry<E>& e : enum_table<E>()) {
    if (e.value == value) return true;
  }
  return false;
}

}  // namespace cufm
