// Fuzz target: cufm::read_npy on arbitrary bytes. Any input must give an array or a cufm::Error;
// a crash, a sanitizer report, a hang or an allocation beyond the file's size is a bug. (The file
// limits allocations: cuFM checks the claimed shape against the file's size before reading.)
#include <cstddef>
#include <cstdint>

#include "cufm/dataset.hpp"
#include "cufm/error.hpp"
#include "fuzz_input_file.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string& path = cufm::fuzz::as_file(data, size, ".npy");
  try {
    const cufm::NpyArray a = cufm::read_npy(path);
    (void)a;
    (void)cufm::load_npy_dataset(path);
  } catch (const cufm::Error&) {
  }
  return 0;
}
