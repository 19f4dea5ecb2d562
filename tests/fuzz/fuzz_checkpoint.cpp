// Fuzz target: cufm::load_checkpoint on arbitrary bytes. Any input must give a checkpoint or a
// cufm::Error; a crash, a sanitizer report or an allocation beyond what the file holds is a bug.
#include <cstddef>
#include <cstdint>

#include "cufm/checkpoint.hpp"
#include "cufm/error.hpp"
#include "fuzz_input_file.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string& path = cufm::fuzz::as_file(data, size, ".safetensors");
  try {
    const cufm::Checkpoint c = cufm::load_checkpoint(path);
    (void)c.to_model(cufm::Weights::Trained);
  } catch (const cufm::Error&) {
  }
  return 0;
}
